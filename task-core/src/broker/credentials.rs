//! Broker credentials given apart from the URL (a password file, the
//! environment), so that the password need not be written in a URL that
//! command lines and process listings show.
//!
//! They apply to every broker node whose URL names no user
//! (`amqp://host:5672/%2f`); a URL's own `user:password@` wins.

use std::fmt;
use std::path::{Path, PathBuf};

use super::BrokerError;

/// The user name of [`Credentials::from_env`] when only a password is given.
pub const DEFAULT_USER: &str = "guest";

/// The environment variable with the broker's user name.
pub const USER_VAR: &str = "BROKER_USER";
/// The environment variable with the broker's password.
pub const PASSWORD_VAR: &str = "BROKER_PASSWORD";
/// The environment variable naming a file that holds the broker's password.
pub const PASSWORD_FILE_VAR: &str = "BROKER_PASSWORD_FILE";

/// A user name and password for the broker, used for the nodes whose URL
/// has no `user:password@` of its own. Any characters may be used: they
/// are given to the client as they are, not spliced into a URL.
///
/// Its `Debug` shows the password as `***`.
///
/// ```
/// use task_core::broker::Credentials;
///
/// let credentials = Credentials::new("worker", "s3cr@t;:/");
/// assert_eq!(credentials.user(), "worker");
/// assert!(!format!("{credentials:?}").contains("s3cr"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// These credentials.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `user` with the password read from the file at `path` (a secret
    /// mounted by Docker or Kubernetes): its content without one trailing
    /// line break (`\n` or `\r\n`). A file that cannot be read, is not
    /// UTF-8, is blank, or holds more than one line is refused with
    /// [`BrokerError::CredentialsFile`] naming it (never its content).
    pub fn password_file(
        user: impl Into<String>,
        path: impl AsRef<Path>,
    ) -> Result<Self, BrokerError> {
        let path = path.as_ref();
        let refuse = |reason: String| BrokerError::CredentialsFile {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
        let text =
            String::from_utf8(bytes).map_err(|_| refuse("the password is not UTF-8".into()))?;
        let password = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if password.trim().is_empty() {
            return Err(refuse(
                "the file is empty: it must hold the password".into(),
            ));
        }
        if password.contains(['\n', '\r']) {
            return Err(refuse(
                "the file holds more than one line: it must hold the password alone".into(),
            ));
        }
        Ok(Self::new(user, password))
    }

    /// The credentials the environment gives, if any: `BROKER_USER`
    /// (default `guest`) with `BROKER_PASSWORD`, or with the password read
    /// from the file `BROKER_PASSWORD_FILE` names (see
    /// [`Credentials::password_file`]). `None` when none of the three is
    /// set; empty values count as unset. Refused with
    /// [`BrokerError::Credentials`]: both password variables set, a user
    /// without a password, a value that is not UTF-8.
    pub fn from_env() -> Result<Option<Self>, BrokerError> {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(BrokerError::Credentials {
                reason: format!("`{name}` is not UTF-8"),
            }),
        })
    }

    /// [`Credentials::from_env`] with the variables read by `lookup`.
    fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, BrokerError>,
    ) -> Result<Option<Self>, BrokerError> {
        let var = |name: &str| Ok::<_, BrokerError>(lookup(name)?.filter(|v| !v.is_empty()));
        let user = var(USER_VAR)?;
        match (var(PASSWORD_VAR)?, var(PASSWORD_FILE_VAR)?) {
            (Some(_), Some(_)) => Err(BrokerError::Credentials {
                reason: format!(
                    "both `{PASSWORD_VAR}` and `{PASSWORD_FILE_VAR}` are set: set one of them"
                ),
            }),
            (Some(password), None) => Ok(Some(Self::new(
                user.unwrap_or_else(|| DEFAULT_USER.into()),
                password,
            ))),
            (None, Some(file)) => Self::password_file(
                user.unwrap_or_else(|| DEFAULT_USER.into()),
                PathBuf::from(file),
            )
            .map(Some),
            (None, None) if user.is_some() => Err(BrokerError::Credentials {
                reason: format!(
                    "`{USER_VAR}` is set without a password: set `{PASSWORD_VAR}` or \
                     `{PASSWORD_FILE_VAR}` too"
                ),
            }),
            (None, None) => Ok(None),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password (do not log it).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "task-core-credentials-{label}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env(vars: &[(&str, &str)]) -> Result<Option<Credentials>, BrokerError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Credentials::from_lookup(|name| Ok(vars.get(name).cloned()))
    }

    #[test]
    fn debug_never_shows_the_password() {
        let credentials = Credentials::new("bob", "hunter2");
        let shown = format!("{credentials:?}");
        assert_eq!(shown, r#"Credentials { user: "bob", password: "***" }"#);
        assert_eq!(credentials.password(), "hunter2");
    }

    #[test]
    fn a_password_file_loses_one_line_break_only() {
        let dir = TempDir::new("file");
        for (content, password) in [
            (&b"s3cret\n"[..], "s3cret"),
            (b"s3cret\r\n", "s3cret"),
            (b"s3cret", "s3cret"),
            (b" spaced out \n", " spaced out "),
            (b"p@ss:w/rd;?#%\n", "p@ss:w/rd;?#%"),
        ] {
            let path = dir.file("password", content);
            let credentials = Credentials::password_file("bob", &path).unwrap();
            assert_eq!(credentials, Credentials::new("bob", password));
        }
    }

    #[test]
    fn a_missing_empty_or_multiline_file_is_refused_by_path() {
        let dir = TempDir::new("bad");
        let missing = dir.0.join("missing");
        let empty = dir.file("empty", b"");
        let blank = dir.file("blank", b"  \n");
        let two_lines = dir.file("two-lines", b"secret\nmore\n");
        let binary = dir.file("binary", b"\xff\xfe\n");
        for (path, why) in [
            (&missing, "No such file"),
            (&empty, "empty"),
            (&blank, "empty"),
            (&two_lines, "more than one line"),
            (&binary, "not UTF-8"),
        ] {
            match Credentials::password_file("bob", path) {
                Err(error @ BrokerError::CredentialsFile { .. }) => {
                    let shown = error.to_string();
                    assert!(shown.contains(&path.display().to_string()), "{shown}");
                    assert!(shown.contains(why), "{shown}");
                    assert!(!shown.contains("secret"), "{shown}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn the_environment_gives_a_password_or_a_password_file() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(
            env(&[(PASSWORD_VAR, "pw")]).unwrap(),
            Some(Credentials::new("guest", "pw"))
        );
        assert_eq!(
            env(&[
                (USER_VAR, "bob"),
                (PASSWORD_VAR, "pw"),
                (PASSWORD_FILE_VAR, "")
            ])
            .unwrap(),
            Some(Credentials::new("bob", "pw"))
        );
        let dir = TempDir::new("env");
        let file = dir.file("password", b"from-file\n");
        let file = file.to_str().unwrap();
        assert_eq!(
            env(&[(USER_VAR, "bob"), (PASSWORD_FILE_VAR, file)]).unwrap(),
            Some(Credentials::new("bob", "from-file"))
        );
        assert_eq!(
            env(&[(PASSWORD_FILE_VAR, file)]).unwrap(),
            Some(Credentials::new("guest", "from-file"))
        );
    }

    #[test]
    fn conflicting_or_incomplete_environments_are_refused() {
        let both = env(&[(PASSWORD_VAR, "hunter2"), (PASSWORD_FILE_VAR, "/x")]).unwrap_err();
        assert!(
            matches!(&both, BrokerError::Credentials { reason } if reason.contains("both")),
            "{both:?}"
        );
        assert!(!both.to_string().contains("hunter2"), "{both}");
        let user_only = env(&[(USER_VAR, "bob")]).unwrap_err();
        assert!(
            user_only.to_string().contains("without a password"),
            "{user_only}"
        );
        let missing = env(&[(PASSWORD_FILE_VAR, "/nonexistent/password")]).unwrap_err();
        assert!(
            matches!(&missing, BrokerError::CredentialsFile { path, .. }
                if path == Path::new("/nonexistent/password")),
            "{missing:?}"
        );
    }
}
