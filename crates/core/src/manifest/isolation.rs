//! `[isolation]`: how the site's own processes are kept apart from the machine and from
//! Lifeboat. The site's app is untrusted: it must not reach what undoes an attack on it.

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// How the site's processes are run (`[isolation]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationSpec {
    /// Whether instances, hooks and `lifeboat exec` get a private mount namespace in which a
    /// restored state appears at the site's own paths and Lifeboat's own directory is hidden
    /// (`private_mounts`, default true).
    pub private_mounts: bool,
    /// The user the site's processes run as when Lifeboat runs as root (`user`); `None`: a
    /// per-site system user Lifeboat creates, `lifeboat-SITE`. `"root"` keeps them root.
    pub user: Option<String>,
    /// Names of Lifeboat's own environment variables passed through to the site's processes
    /// (`pass_env`); everything else of Lifeboat's environment stays out.
    pub pass_env: Vec<String>,
}

impl Default for IsolationSpec {
    fn default() -> Self {
        IsolationSpec {
            private_mounts: true,
            user: None,
            pass_env: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIsolation {
    private_mounts: Option<bool>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    pass_env: Vec<Spanned<String>>,
}

/// Variables that hold Lifeboat's own secrets: never passed to the site, whatever the
/// manifest says.
const NEVER_PASSED: [&str; 3] = [
    "LIFEBOAT_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

impl Validator<'_> {
    pub(super) fn isolation(&mut self, raw: RawIsolation) -> IsolationSpec {
        let defaults = IsolationSpec::default();
        let user = raw.user.and_then(|u| {
            let span = u.span();
            let name = u.into_inner();
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
            if valid {
                Some(name)
            } else {
                self.problem(
                    Some(span),
                    "isolation.user",
                    format!("{name:?} is not a user name"),
                    "write the name of an unprivileged user, e.g. user = \"www-data\", or remove \
                     `user` for a per-site user Lifeboat creates"
                        .into(),
                );
                None
            }
        });
        let mut pass_env = Vec::new();
        for name in raw.pass_env {
            let span = name.span();
            let name = name.into_inner();
            if NEVER_PASSED.contains(&name.as_str()) {
                self.problem(
                    Some(span),
                    "isolation.pass_env",
                    format!(
                        "{name} holds one of Lifeboat's secrets; the site's processes never get it"
                    ),
                    "remove it; give the app its own credentials in [processes.NAME] env".into(),
                );
            } else if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.problem(
                    Some(span),
                    "isolation.pass_env",
                    format!("{name:?} is not an environment variable name"),
                    "write names like \"DATABASE_URL\"".into(),
                );
            } else {
                pass_env.push(name);
            }
        }
        IsolationSpec {
            private_mounts: raw.private_mounts.unwrap_or(defaults.private_mounts),
            user,
            pass_env,
        }
    }
}
