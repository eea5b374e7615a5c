//! Whose delivery is this? One App or organisation webhook secret covers
//! many repositories, so a correctly signed delivery may be another
//! repository's. Those are recorded as ignored and change nothing.
//!
//! The configured repository is compared by GitHub's numeric id, pinned from
//! the API on the first start or `sync`, so a rename keeps working. Until the
//! id is known, `full_name` is compared, ignoring case as GitHub does.

use std::sync::atomic::{AtomicU64, Ordering};

use super::events::{Envelope, Repository};

/// The repository (and App installation) this server acts for.
#[derive(Debug)]
pub struct Home {
    full_name: String,
    /// 0 until pinned: GitHub never hands out id 0.
    id: AtomicU64,
    installation_id: Option<u64>,
}

/// Why a delivery is not this repository's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// Another repository, named as the payload names it.
    Repository(String),
    /// Another installation of the same App.
    Installation(u64),
}

impl Foreign {
    /// The reason recorded on the delivery.
    pub fn reason(&self) -> String {
        match self {
            Foreign::Repository(name) => format!("foreign repository {name}"),
            Foreign::Installation(id) => format!("foreign installation {id}"),
        }
    }

    /// A metric label from a fixed set (never the payload's own text).
    pub fn label(&self) -> &'static str {
        match self {
            Foreign::Repository(_) => "foreign-repository",
            Foreign::Installation(_) => "foreign-installation",
        }
    }
}

impl Home {
    /// `full_name` is `github.repository`; `installation_id` is set with
    /// App authentication.
    pub fn new(full_name: &str, installation_id: Option<u64>) -> Home {
        Home {
            full_name: full_name.to_string(),
            id: AtomicU64::new(0),
            installation_id,
        }
    }

    /// The configured `owner/name`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// The pinned id, once known.
    pub fn id(&self) -> Option<u64> {
        Some(self.id.load(Ordering::Acquire)).filter(|id| *id != 0)
    }

    /// Pins the repository's id.
    pub fn pin(&self, id: u64) {
        self.id.store(id, Ordering::Release);
    }

    /// Whether `repository` is this one.
    pub fn is_home(&self, repository: &Repository) -> bool {
        match self.id() {
            Some(id) => repository.id == id,
            None => repository.full_name.eq_ignore_ascii_case(&self.full_name),
        }
    }

    /// `Some` when a delivery carrying `envelope` belongs elsewhere. A
    /// delivery that names no repository (`ping`, `installation`) is home.
    pub fn foreign(&self, envelope: &Envelope) -> Option<Foreign> {
        if let Some(repository) = &envelope.repository {
            if !self.is_home(repository) {
                return Some(Foreign::Repository(repository.full_name.clone()));
            }
        }
        match (&envelope.installation, self.installation_id) {
            (Some(delivered), Some(ours)) if delivered.id != ours => {
                Some(Foreign::Installation(delivered.id))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::Installation;
    use super::*;

    fn from(id: u64, name: &str, installation: Option<u64>) -> Envelope {
        Envelope {
            repository: Some(Repository {
                id,
                full_name: name.into(),
            }),
            installation: installation.map(|id| Installation { id }),
        }
    }

    #[test]
    fn before_the_id_is_pinned_the_name_decides_ignoring_case() {
        let home = Home::new("acme/fleet", None);
        assert_eq!(home.foreign(&from(7, "ACME/Fleet", None)), None);
        assert_eq!(
            home.foreign(&from(7, "acme/website", None)),
            Some(Foreign::Repository("acme/website".into()))
        );
    }

    #[test]
    fn once_pinned_the_id_decides_so_a_rename_keeps_working() {
        let home = Home::new("acme/fleet", None);
        home.pin(7);
        assert_eq!(home.foreign(&from(7, "acme/fleet-renamed", None)), None);
        // A new repository that took the old name is someone else's.
        assert!(home.foreign(&from(8, "acme/fleet", None)).is_some());
    }

    #[test]
    fn another_installation_of_the_app_is_foreign() {
        let home = Home::new("acme/fleet", Some(42));
        assert_eq!(home.foreign(&from(7, "acme/fleet", Some(42))), None);
        assert_eq!(
            home.foreign(&from(7, "acme/fleet", Some(43))),
            Some(Foreign::Installation(43))
        );
        // Token authentication has no installation to compare.
        let home = Home::new("acme/fleet", None);
        assert_eq!(home.foreign(&from(7, "acme/fleet", Some(43))), None);
    }

    #[test]
    fn a_delivery_without_a_repository_is_home() {
        let home = Home::new("acme/fleet", Some(42));
        assert_eq!(home.foreign(&Envelope::default()), None);
    }

    #[test]
    fn labels_are_a_fixed_set() {
        assert_eq!(
            Foreign::Repository("x/y\n".into()).label(),
            "foreign-repository"
        );
        assert_eq!(Foreign::Installation(1).label(), "foreign-installation");
    }
}
