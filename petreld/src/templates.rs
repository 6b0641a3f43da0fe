//! Templates with versions: `POST /v1/templates` makes version 1 (from a config, or from an
//! existing VM's config with `from_vm`), `POST /v1/templates/{name}/versions` the next one,
//! `GET …/versions[/{n}]` lists or shows them. A VM made from a template records the version
//! it came from (`template_version`), and may ask for one.

use api::VmConfig;
use serde::Deserialize;

use super::model::{now, validate_meta, validate_name, Template};
use super::ops::check_config;
use super::{ApiError, ApiResult, Daemon};

/// `POST /v1/templates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The configuration (or `from_vm`).
    #[serde(default)]
    pub config: Option<VmConfig>,
    /// An existing VM (name or id) whose configuration becomes the template's (or `config`).
    #[serde(default)]
    pub from_vm: Option<String>,
    /// Ignored when given (petreld numbers versions); accepted so that a template read back
    /// from `GET` can be posted again.
    #[serde(default)]
    pub version: Option<u32>,
    /// Ignored when given (set by petreld), as `version`.
    #[serde(default)]
    pub created_at: Option<String>,
}

/// `POST /v1/templates/{name}/versions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    /// Free text (default: none).
    #[serde(default)]
    pub description: Option<String>,
    /// The configuration (or `from_vm`).
    #[serde(default)]
    pub config: Option<VmConfig>,
    /// An existing VM (name or id) whose configuration becomes this version's.
    #[serde(default)]
    pub from_vm: Option<String>,
}

fn bad(m: String) -> ApiError {
    ApiError::new(400, m)
}

fn no_template(name: &str) -> ApiError {
    ApiError::new(404, format!("no template {name:?}"))
}

impl Daemon {
    /// The configuration of `config` or of VM `from_vm`, checked.
    fn template_config(
        &self,
        config: Option<VmConfig>,
        from_vm: Option<&str>,
    ) -> ApiResult<VmConfig> {
        let config = match (config, from_vm) {
            (Some(_), Some(_)) => return Err(bad("give config or from_vm, not both".into())),
            (None, None) => return Err(bad("config or from_vm is required".into())),
            (Some(c), None) => c,
            (None, Some(vm)) => self.get_vm(vm)?.config,
        };
        check_config(&config)?;
        Ok(config)
    }

    /// `POST /v1/templates`: version 1 of a new template.
    pub fn create_template(&self, req: CreateTemplate) -> ApiResult<Template> {
        validate_name("name", &req.name).map_err(bad)?;
        validate_meta(req.description.as_deref(), &[]).map_err(bad)?;
        let config = self.template_config(req.config, req.from_vm.as_deref())?;
        let t = Template {
            name: req.name,
            description: req.description,
            config,
            created_at: now(),
            version: 1,
        };
        self.store().insert_template(&t)?;
        Ok(t)
    }

    /// `POST /v1/templates/{name}/versions`: the next version of template `name`.
    pub fn add_template_version(&self, name: &str, req: NewVersion) -> ApiResult<Template> {
        validate_meta(req.description.as_deref(), &[]).map_err(bad)?;
        if self.store().get_template(name)?.is_none() {
            return Err(no_template(name));
        }
        let config = self.template_config(req.config, req.from_vm.as_deref())?;
        let t = Template {
            name: name.to_string(),
            description: req.description,
            config,
            created_at: now(),
            version: 0,
        };
        self.store()
            .add_template_version(&t)?
            .ok_or_else(|| no_template(name))
    }

    /// `GET /v1/templates/{name}/versions`: every version, oldest first.
    pub fn template_versions(&self, name: &str) -> ApiResult<Vec<Template>> {
        let v = self.store().list_template_versions(name)?;
        if v.is_empty() {
            return Err(no_template(name));
        }
        Ok(v)
    }

    /// `GET /v1/templates/{name}/versions/{version}`.
    pub fn template_version(&self, name: &str, version: &str) -> ApiResult<Template> {
        let n: u32 = version
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("version: {version:?} is not a version number")))?;
        self.store()
            .get_template_version(name, n)?
            .ok_or_else(|| ApiError::new(404, format!("template {name:?} has no version {n}")))
    }
}
