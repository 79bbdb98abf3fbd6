//! `[isolation]`: how the site's own processes are kept apart from the machine and from
//! Lifeboat.

use serde::Deserialize;

use super::Validator;

/// How the site's processes are run (`[isolation]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationSpec {
    /// Whether instances, hooks and `lifeboat exec` get a private mount namespace in which a
    /// restored state appears at the site's own paths (`private_mounts`, default true). Off,
    /// they find a restored state only through `$LIFEBOAT_STATE_DIR`.
    pub private_mounts: bool,
}

impl Default for IsolationSpec {
    fn default() -> Self {
        IsolationSpec {
            private_mounts: true,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIsolation {
    private_mounts: Option<bool>,
}

impl Validator<'_> {
    pub(super) fn isolation(&mut self, raw: RawIsolation) -> IsolationSpec {
        let defaults = IsolationSpec::default();
        IsolationSpec {
            private_mounts: raw.private_mounts.unwrap_or(defaults.private_mounts),
        }
    }
}
