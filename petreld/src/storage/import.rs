//! Images: a kernel, initramfs or root disk imported into a pool as a volume, its SHA-256
//! checked, and VM payloads that name such volumes (`"kernel": {"volume": "pool/name"}`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{bad, volume_ref, CreateVolume, Pool, VolumeFormat, VolumeRecord};
use crate::model::now;
use crate::{ApiError, ApiResult, Daemon};

/// Bytes read at a time; an all-zero chunk is left as a hole.
const CHUNK: usize = 1 << 20;

/// Copies `src` to `dst` (sparse: zero chunks are skipped) and returns the SHA-256 of the
/// bytes read, in hex.
fn copy_hashing(src: &mut File, dst: &mut File) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        hash.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64))?;
        } else {
            dst.write_all(chunk)?;
        }
        len += n as u64;
    }
    dst.set_len(len)?;
    dst.sync_all()?;
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Daemon {
    /// `POST /v1/volumes` with `import`: copies the file into the pool, checks its SHA-256
    /// (422 on a mismatch, nothing left behind), and records it. A qcow2 file stays qcow2
    /// (one with a backing file is refused: it would point outside the pool); anything else
    /// is raw.
    pub(super) fn import_volume(&self, pool: &Pool, req: CreateVolume) -> ApiResult<Value> {
        let Some(src) = req.import.as_deref() else {
            return Err(bad("import is required"));
        };
        let want = req
            .sha256
            .as_deref()
            .map(str::to_ascii_lowercase)
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad("sha256: 64 hex digits are required with import"))?;
        if req.clone_of.is_some() || req.capacity.is_some() {
            return Err(bad("import takes neither clone_of nor capacity"));
        }
        let unreadable =
            |e: std::io::Error| ApiError::new(422, format!("import: {}: {e}", src.display()));
        if !src.is_absolute() {
            return Err(bad(format!("import: {} is not absolute", src.display())));
        }
        // Before opening: a FIFO would block.
        let meta = std::fs::metadata(src).map_err(unreadable)?;
        if !meta.is_file() {
            return Err(ApiError::new(
                422,
                format!("import: {} is not a regular file", src.display()),
            ));
        }
        super::Daemon::check_room(pool, meta.len())?;
        let path = pool.path.join(&req.name);
        if path.exists() {
            return Err(ApiError::new(
                409,
                format!("{} already exists in pool {:?}", req.name, pool.name),
            ));
        }
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(src)
            .map_err(unreadable)?;
        let tmp = pool.path.join(format!(".{}.importing", req.name));
        let result = (|| {
            let mut out = File::create(&tmp)
                .map_err(|e| ApiError::new(500, format!("{}: {e}", tmp.display())))?;
            let got = copy_hashing(&mut input, &mut out).map_err(unreadable)?;
            if got != want {
                return Err(ApiError::new(
                    422,
                    format!(
                        "import: {}: sha256 is {got}, not the {want} given",
                        src.display()
                    ),
                ));
            }
            self.describe_import(&tmp, req.format)
        })();
        let (format, capacity) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let record = VolumeRecord {
            pool: pool.name.clone(),
            name: req.name.clone(),
            format,
            capacity,
            backing: None,
            created_at: now(),
        };
        if let Err(e) = self.store().insert_volume(&record) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            let _ = self.store().delete_volume(&record.pool, &record.name);
            return Err(ApiError::new(
                500,
                format!("cannot place {}: {e}", path.display()),
            ));
        }
        self.volume_json(pool, &record)
    }

    /// The format and size of an imported file: what `qemu-img info` finds (qcow2 without a
    /// backing file, or raw), checked against the format asked for.
    fn describe_import(
        &self,
        file: &Path,
        asked: Option<VolumeFormat>,
    ) -> ApiResult<(VolumeFormat, u64)> {
        let f = file.to_string_lossy().into_owned();
        let info: Value = serde_json::from_str(&self.qemu_img(&["info", "--output=json", &f])?)
            .map_err(|e| ApiError::new(500, format!("qemu-img info: {e}")))?;
        let found = match info.get("format").and_then(Value::as_str) {
            Some("qcow2") => VolumeFormat::Qcow2,
            Some("raw") => VolumeFormat::Raw,
            other => {
                return Err(ApiError::new(
                    422,
                    format!(
                        "import: a {} image (raw or qcow2 only)",
                        other.unwrap_or("?")
                    ),
                ))
            }
        };
        if info.get("backing-filename").is_some() {
            return Err(ApiError::new(
                422,
                "import: the qcow2 image has a backing file (import a flattened image)",
            ));
        }
        if let Some(a) = asked.filter(|a| *a != found) {
            return Err(ApiError::new(
                422,
                format!("import: the file is {}, not {}", found.as_str(), a.as_str()),
            ));
        }
        let size = info
            .get("virtual-size")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok((found, size))
    }

    /// Replaces `payload.kernel` / `payload.initramfs` given as `{"volume": "pool/name"}` by
    /// the volume's file.
    pub(super) fn resolve_payload(&self, config: &mut Value) -> ApiResult<()> {
        let Some(payload) = config.get_mut("payload").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        for key in ["kernel", "initramfs"] {
            let Some(r) = payload
                .get(key)
                .and_then(|v| v.get("volume"))
                .map(|v| v.as_str().map(str::to_string))
            else {
                continue;
            };
            let field = format!("config.payload.{key}.volume");
            let r = r.ok_or_else(|| bad(format!("{field}: must be a string pool/name")))?;
            let (pool, name) = volume_ref(&field, &r)?;
            let (p, v) = self
                .volume(&pool, &name)
                .map_err(|e| ApiError::new(422, format!("{field}: {}", e.message)))?;
            let path = p.path.join(&v.name).to_string_lossy().into_owned();
            payload.insert(key.into(), Value::String(path));
        }
        Ok(())
    }
}
