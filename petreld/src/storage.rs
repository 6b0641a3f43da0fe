//! Storage: directory pools and the volumes in them (`/v1/pools`, `/v1/volumes`).
//!
//! A pool is a directory under one of the config's `storage_roots`. A volume is a file in it,
//! raw or qcow2, made, cloned (a qcow2 overlay whose backing file is another volume: a thin
//! clone), grown and converted by `qemu-img` (Debian `qemu-utils`); sparse unless converted.
//! The database holds what was asked; sizes on disk are read when answered. A volume used by
//! a VM's config, or the base of another volume, is not deleted, converted or shrunk (409
//! naming the users). VMs name volumes as `{"volume": "pool/name"}` in `config.disks`,
//! resolved to the file (and its format) when the VM is created.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod import;

use super::model::{now, validate_name};
use super::{ApiError, ApiResult, Daemon};

/// A directory pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// When it was made.
    pub created_at: String,
}

/// A volume's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    /// Raw (sparse).
    #[default]
    Raw,
    /// qcow2.
    Qcow2,
}

impl VolumeFormat {
    /// The name `qemu-img` and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for VolumeFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "raw" => Ok(VolumeFormat::Raw),
            "qcow2" => Ok(VolumeFormat::Qcow2),
            _ => Err(()),
        }
    }
}

/// A volume as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Its pool.
    pub pool: String,
    /// Unique in the pool.
    pub name: String,
    /// Format.
    pub format: VolumeFormat,
    /// Size the guest sees, bytes.
    pub capacity: u64,
    /// The volume it is a thin clone of (`pool/name`).
    pub backing: Option<String>,
    /// When it was made.
    pub created_at: String,
}

/// `POST /v1/pools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// Name.
    pub name: String,
    /// Directory (made if missing) under one of the allowed roots.
    pub path: PathBuf,
}

/// `POST /v1/volumes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// The pool.
    pub pool: String,
    /// Name in the pool.
    pub name: String,
    /// Format (default raw; a clone is always qcow2).
    #[serde(default)]
    pub format: Option<VolumeFormat>,
    /// Size, bytes or with a K/M/G/T suffix (a clone: default the base's).
    #[serde(default)]
    pub capacity: Option<Value>,
    /// Make a thin clone of this volume (`pool/name`).
    #[serde(default)]
    pub clone_of: Option<String>,
    /// Import this file (a kernel, an initramfs, a raw or qcow2 root disk) as the volume.
    #[serde(default)]
    pub import: Option<PathBuf>,
    /// The imported file's SHA-256 (hex), required with `import`.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// `POST /v1/volumes/{pool}/{name}/resize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// New size (grow only).
    pub capacity: Value,
}

/// `POST /v1/volumes/{pool}/{name}/convert`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    /// New format.
    pub format: VolumeFormat,
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(400, m)
}

/// A pool or volume name: [`validate_name`], and never `..` anywhere.
fn check_name(field: &str, name: &str) -> ApiResult<()> {
    validate_name(field, name).map_err(bad)?;
    if name.contains("..") {
        return Err(bad(format!("{field}: {name:?} must not contain '..'")));
    }
    Ok(())
}

/// A size: a JSON number of bytes or a string such as `"10G"`.
fn size(field: &str, v: &Value) -> ApiResult<u64> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => api::parse_size(s).ok(),
        _ => None,
    };
    match n {
        Some(n) if n > 0 && n % 512 == 0 => Ok(n),
        Some(n) if n > 0 => Err(bad(format!("{field}: {n} is not a multiple of 512 bytes"))),
        _ => Err(bad(format!(
            "{field}: {v} is not a size (bytes, or a number with K, M, G or T)"
        ))),
    }
}

/// `pool/name` split and checked.
fn volume_ref(field: &str, s: &str) -> ApiResult<(String, String)> {
    let (pool, name) = s
        .split_once('/')
        .ok_or_else(|| bad(format!("{field}: {s:?} is not pool/name")))?;
    check_name(field, pool)?;
    check_name(field, name)?;
    Ok((pool.to_string(), name.to_string()))
}

/// Bytes free for an unprivileged user on the file system of `dir`, and its size.
fn fs_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs only writes the struct we pass; the path is a NUL-terminated string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize;
    Ok((st.f_bavail * unit, st.f_blocks * unit))
}

/// `path` with its longest existing ancestor's symlinks resolved (the rest does not exist,
/// so holds none).
fn resolve(path: &Path) -> PathBuf {
    for a in path.ancestors() {
        if let Ok(real) = a.canonicalize() {
            let rest = path.strip_prefix(a).unwrap_or(Path::new(""));
            return real.join(rest);
        }
    }
    path.to_path_buf()
}

/// Bytes a file uses on disk (its allocated blocks).
fn allocation(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

impl Daemon {
    fn qemu_img(&self, args: &[&str]) -> ApiResult<String> {
        let out = Command::new(&self.config.qemu_img)
            .args(args)
            .output()
            .map_err(|e| {
                ApiError::new(
                    503,
                    format!(
                        "cannot run {} ({e}); install qemu-utils",
                        self.config.qemu_img.display()
                    ),
                )
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(ApiError::new(
                500,
                format!("qemu-img {}: {}", args.first().unwrap_or(&""), err.trim()),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A pool with its space, as the API shows it.
    fn pool_json(&self, p: &Pool) -> ApiResult<Value> {
        let (free, size) = fs_space(&p.path).unwrap_or((0, 0));
        let volumes = self.store().list_volumes(Some(&p.name))?;
        let allocation: u64 = volumes
            .iter()
            .map(|v| allocation(&p.path.join(&v.name)))
            .sum();
        let capacity: u64 = volumes.iter().map(|v| v.capacity).sum();
        Ok(serde_json::json!({
            "name": p.name, "path": p.path, "created_at": p.created_at,
            "volumes": volumes.len(), "capacity": capacity, "allocation": allocation,
            "free": free, "size": size,
        }))
    }

    /// `GET /v1/pools`.
    pub fn list_pools(&self) -> ApiResult<Value> {
        let pools = self.store().list_pools()?;
        let items = pools
            .iter()
            .map(|p| self.pool_json(p))
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(serde_json::json!({ "items": items }))
    }

    fn pool(&self, name: &str) -> ApiResult<Pool> {
        self.store()
            .get_pool(name)?
            .ok_or_else(|| ApiError::new(404, format!("no pool {name:?}")))
    }

    /// `GET /v1/pools/{name}`.
    pub fn get_pool(&self, name: &str) -> ApiResult<Value> {
        self.pool_json(&self.pool(name)?)
    }

    /// `POST /v1/pools`: the directory must lie under an allowed root (made if missing).
    pub fn create_pool(&self, req: CreatePool) -> ApiResult<Value> {
        check_name("name", &req.name)?;
        let path = &req.path;
        let lexical_ok = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !lexical_ok {
            return Err(bad(format!(
                "path: {} must be absolute, without '.' or '..'",
                path.display()
            )));
        }
        let outside = || {
            let roots: Vec<String> = self
                .config
                .storage_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            ApiError::new(
                403,
                format!(
                    "path: {} is not under an allowed storage root ({})",
                    path.display(),
                    roots.join(", ")
                ),
            )
        };
        // Through the symlinks of what exists before anything is made, then again after.
        let target = resolve(path);
        let roots: Vec<PathBuf> = self
            .config
            .storage_roots
            .iter()
            .map(|r| resolve(r))
            .collect();
        if !roots.iter().any(|r| target.starts_with(r)) {
            return Err(outside());
        }
        std::fs::create_dir_all(path).map_err(|e| {
            ApiError::new(422, format!("path: cannot make {}: {e}", path.display()))
        })?;
        let real = path
            .canonicalize()
            .map_err(|e| ApiError::new(422, format!("path: {}: {e}", path.display())))?;
        let inside = roots.iter().any(|r| real.starts_with(r));
        if !inside {
            return Err(outside());
        }
        let pool = Pool {
            name: req.name,
            path: real,
            created_at: now(),
        };
        self.store().insert_pool(&pool)?;
        self.pool_json(&pool)
    }

    /// `DELETE /v1/pools/{name}`: only an empty pool; its directory stays.
    pub fn delete_pool(&self, name: &str) -> ApiResult<()> {
        let pool = self.pool(name)?;
        let volumes = self.store().list_volumes(Some(&pool.name))?;
        if !volumes.is_empty() {
            let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
            return Err(ApiError::new(
                409,
                format!("pool {name:?} still has volumes: {}", names.join(", ")),
            ));
        }
        self.store().delete_pool(name)?;
        Ok(())
    }

    fn volume(&self, pool: &str, name: &str) -> ApiResult<(Pool, VolumeRecord)> {
        let p = self.pool(pool)?;
        let v = self
            .store()
            .get_volume(pool, name)?
            .ok_or_else(|| ApiError::new(404, format!("no volume {pool}/{name}")))?;
        Ok((p, v))
    }

    /// Names of the VMs whose config uses the file `path`.
    fn vms_using(&self, path: &Path) -> ApiResult<Vec<String>> {
        let vms = self.store().all_vms()?;
        Ok(vms
            .into_iter()
            .filter(|vm| {
                let p = &vm.config.payload;
                vm.config.disks.iter().flatten().any(|d| d.path == path)
                    || p.kernel == path
                    || p.initramfs.as_deref() == Some(path)
            })
            .map(|vm| vm.name)
            .collect())
    }

    /// The volumes that are thin clones of `pool/name`.
    fn clones_of(&self, pool: &str, name: &str) -> ApiResult<Vec<String>> {
        let me = format!("{pool}/{name}");
        Ok(self
            .store()
            .list_volumes(None)?
            .into_iter()
            .filter(|v| v.backing.as_deref() == Some(me.as_str()))
            .map(|v| format!("{}/{}", v.pool, v.name))
            .collect())
    }

    /// 409 when a VM or a clone uses the volume; `what` names the refused operation.
    fn check_unused(&self, pool: &Pool, v: &VolumeRecord, what: &str) -> ApiResult<()> {
        let vms = self.vms_using(&pool.path.join(&v.name))?;
        if !vms.is_empty() {
            return Err(ApiError::new(
                409,
                format!(
                    "cannot {what} volume {}/{}: attached to VM {}",
                    v.pool,
                    v.name,
                    vms.join(", ")
                ),
            ));
        }
        let clones = self.clones_of(&v.pool, &v.name)?;
        if !clones.is_empty() {
            return Err(ApiError::new(
                409,
                format!(
                    "cannot {what} volume {}/{}: it is the base of {}",
                    v.pool,
                    v.name,
                    clones.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn volume_json(&self, pool: &Pool, v: &VolumeRecord) -> ApiResult<Value> {
        let path = pool.path.join(&v.name);
        Ok(serde_json::json!({
            "pool": v.pool, "name": v.name, "path": path, "format": v.format,
            "capacity": v.capacity, "allocation": allocation(&path),
            "clone_of": v.backing, "created_at": v.created_at,
            "used_by": self.vms_using(&path)?,
        }))
    }

    /// `GET /v1/volumes[?pool=]`.
    pub fn list_volumes(&self, pool: Option<&str>) -> ApiResult<Value> {
        let pools = self.store().list_pools()?;
        if let Some(p) = pool {
            self.pool(p)?;
        }
        let mut items = Vec::new();
        // Not in the loop's head: the store's lock would be held while each is shown.
        let volumes = self.store().list_volumes(pool)?;
        for v in volumes {
            if let Some(p) = pools.iter().find(|p| p.name == v.pool) {
                items.push(self.volume_json(p, &v)?);
            }
        }
        Ok(serde_json::json!({ "items": items }))
    }

    /// `GET /v1/volumes/{pool}/{name}`.
    pub fn get_volume(&self, pool: &str, name: &str) -> ApiResult<Value> {
        let (p, v) = self.volume(pool, name)?;
        self.volume_json(&p, &v)
    }

    /// 507 unless the pool's file system has `bytes` free.
    fn check_room(pool: &Pool, bytes: u64) -> ApiResult<()> {
        let (free, _) = fs_space(&pool.path).map_err(|e| {
            ApiError::new(
                500,
                format!("pool {}: {}: {e}", pool.name, pool.path.display()),
            )
        })?;
        if bytes > free {
            return Err(ApiError::new(
                507,
                format!(
                    "a volume of {bytes} bytes is larger than pool {:?}'s free space ({free} bytes)",
                    pool.name
                ),
            ));
        }
        Ok(())
    }

    /// `POST /v1/volumes`: a new volume, or a thin clone of another.
    pub fn create_volume(&self, req: CreateVolume) -> ApiResult<Value> {
        check_name("pool", &req.pool)?;
        check_name("name", &req.name)?;
        let pool = self.pool(&req.pool)?;
        let path = pool.path.join(&req.name);
        if req.import.is_some() {
            return self.import_volume(&pool, req);
        }
        if req.sha256.is_some() {
            return Err(bad("sha256 goes with import"));
        }
        let base = match &req.clone_of {
            Some(r) => {
                let (bp, bn) = volume_ref("clone_of", r)?;
                Some(
                    self.volume(&bp, &bn)
                        .map_err(|e| ApiError::new(422, e.message))?,
                )
            }
            None => None,
        };
        let capacity = match (&req.capacity, &base) {
            (Some(c), _) => size("capacity", c)?,
            (None, Some((_, b))) => b.capacity,
            (None, None) => return Err(bad("capacity is required")),
        };
        let format = match (&base, req.format) {
            (Some(_), Some(VolumeFormat::Raw)) => {
                return Err(bad(
                    "format: a clone is qcow2 (its base is its backing file)",
                ))
            }
            (Some(_), _) => VolumeFormat::Qcow2,
            (None, f) => f.unwrap_or_default(),
        };
        if let Some((_, b)) = &base {
            if capacity < b.capacity {
                return Err(bad(format!(
                    "capacity: {capacity} is smaller than the base's {}",
                    b.capacity
                )));
            }
        }
        Self::check_room(&pool, capacity)?;
        if path.exists() {
            return Err(ApiError::new(
                409,
                format!("{} already exists in pool {:?}", req.name, pool.name),
            ));
        }
        let record = VolumeRecord {
            pool: pool.name.clone(),
            name: req.name.clone(),
            format,
            capacity,
            backing: base.as_ref().map(|(p, b)| format!("{}/{}", p.name, b.name)),
            created_at: now(),
        };
        // Recorded first, so that a file qemu-img leaves behind is always one petreld knows.
        self.store().insert_volume(&record)?;
        let path_s = path.to_string_lossy().into_owned();
        let cap = capacity.to_string();
        let made = match &base {
            Some((bp, b)) => {
                let base_path = bp.path.join(&b.name).to_string_lossy().into_owned();
                self.qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &base_path,
                    "-F",
                    b.format.as_str(),
                    &path_s,
                    &cap,
                ])
            }
            None => self.qemu_img(&["create", "-q", "-f", format.as_str(), &path_s, &cap]),
        };
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            let _ = self.store().delete_volume(&record.pool, &record.name);
            return Err(e);
        }
        self.volume_json(&pool, &record)
    }

    /// `DELETE /v1/volumes/{pool}/{name}`: refused while a VM or a clone uses it.
    pub fn delete_volume(&self, pool: &str, name: &str) -> ApiResult<()> {
        let (p, v) = self.volume(pool, name)?;
        self.check_unused(&p, &v, "delete")?;
        let path = p.path.join(&v.name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::new(
                    500,
                    format!("cannot remove {}: {e}", path.display()),
                ))
            }
        }
        self.store().delete_volume(pool, name)?;
        Ok(())
    }

    /// `POST /v1/volumes/{pool}/{name}/resize`: grows (shrinking would lose data); refused
    /// while a VM uses it.
    pub fn resize_volume(&self, pool: &str, name: &str, req: Resize) -> ApiResult<Value> {
        let (p, mut v) = self.volume(pool, name)?;
        let capacity = size("capacity", &req.capacity)?;
        if capacity < v.capacity {
            return Err(bad(format!(
                "capacity: {capacity} is smaller than {} (volumes only grow)",
                v.capacity
            )));
        }
        let vms = self.vms_using(&p.path.join(&v.name))?;
        if !vms.is_empty() {
            return Err(ApiError::new(
                409,
                format!(
                    "cannot resize volume {pool}/{name}: attached to VM {}",
                    vms.join(", ")
                ),
            ));
        }
        Self::check_room(&p, capacity - v.capacity)?;
        let path = p.path.join(&v.name).to_string_lossy().into_owned();
        self.qemu_img(&[
            "resize",
            "-q",
            "-f",
            v.format.as_str(),
            &path,
            &capacity.to_string(),
        ])?;
        v.capacity = capacity;
        self.store().update_volume(&v)?;
        self.volume_json(&p, &v)
    }

    /// `POST /v1/volumes/{pool}/{name}/convert`: rewrites the volume in another format
    /// (a clone becomes a full copy); refused while a VM or a clone uses it.
    pub fn convert_volume(&self, pool: &str, name: &str, req: Convert) -> ApiResult<Value> {
        let (p, mut v) = self.volume(pool, name)?;
        self.check_unused(&p, &v, "convert")?;
        if req.format == v.format && v.backing.is_none() {
            return self.volume_json(&p, &v);
        }
        Self::check_room(&p, v.capacity)?;
        let path = p.path.join(&v.name);
        let tmp = p.path.join(format!(".{}.converting", v.name));
        let (src, dst) = (
            path.to_string_lossy().into_owned(),
            tmp.to_string_lossy().into_owned(),
        );
        let done = self.qemu_img(&[
            "convert",
            "-f",
            v.format.as_str(),
            "-O",
            req.format.as_str(),
            &src,
            &dst,
        ]);
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ApiError::new(500, format!("cannot replace {}: {e}", path.display()))
        })?;
        v.format = req.format;
        v.backing = None;
        self.store().update_volume(&v)?;
        self.volume_json(&p, &v)
    }

    /// Replaces every `{"volume": "pool/name"}` in `config.disks` by the volume's file and
    /// format (backing files allowed: a clone's base is petreld's own volume).
    pub fn resolve_volumes(&self, config: &mut Value) -> ApiResult<()> {
        self.resolve_payload(config)?;
        let Some(disks) = config.get_mut("disks").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for (i, disk) in disks.iter_mut().enumerate() {
            let Some(obj) = disk.as_object_mut() else {
                continue;
            };
            let Some(r) = obj.remove("volume") else {
                continue;
            };
            let field = format!("config.disks[{i}].volume");
            let r = r
                .as_str()
                .ok_or_else(|| bad(format!("{field}: must be a string pool/name")))?;
            if obj.contains_key("path") {
                return Err(bad(format!("{field}: give volume or path, not both")));
            }
            let (pool, name) = volume_ref(&field, r)?;
            let (p, v) = self
                .volume(&pool, &name)
                .map_err(|e| ApiError::new(422, format!("{field}: {}", e.message)))?;
            let image_type = match v.format {
                VolumeFormat::Raw => "Raw",
                VolumeFormat::Qcow2 => "Qcow2",
            };
            obj.insert(
                "path".into(),
                Value::String(p.path.join(&v.name).to_string_lossy().into()),
            );
            obj.insert("image_type".into(), Value::String(image_type.into()));
            if v.backing.is_some() {
                obj.insert("backing_files".into(), Value::Bool(true));
            }
        }
        Ok(())
    }
}

/// The pool and volume routes' path checks, for the router: `pool/name` from two segments.
pub fn check_volume_path(pool: &str, name: &str) -> ApiResult<()> {
    check_name("pool", pool)?;
    check_name("name", name)
}
