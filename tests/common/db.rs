//! A fresh database per test, on each backend.
//!
//! SQLite is a file in a temp dir. Postgres is a new database on the server
//! named by `CHANGEGATE_TEST_POSTGRES_URL` (an admin URL; `.ci/test` starts
//! one), owned by the unprivileged role `changegate` that the server then
//! connects as. Without that variable the Postgres tests fail, loudly: a
//! skipped backend is not a tested one.

use sqlx::Connection;

/// The two backends every storage test runs against.
pub const BACKENDS: [&str; 2] = ["sqlite", "postgres"];

/// A database that lives as long as this value.
pub struct TestDatabase {
    /// The URL the server uses.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

fn admin_url() -> String {
    std::env::var("CHANGEGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("CHANGEGATE_TEST_POSTGRES_URL is not set: the Postgres half of this test cannot run. Run the suite with `.ci/test`, which starts a throwaway Postgres.")
    })
}

/// A new, empty database on `backend` ("sqlite" or "postgres").
pub fn fresh(backend: &str) -> TestDatabase {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("changegate.db").display());
            TestDatabase {
                url,
                _dir: Some(dir),
            }
        }
        "postgres" => {
            let admin = admin_url();
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            let name = format!("cg_test_{}", hex::encode(bytes));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the test Postgres");
                // The server runs as a role that owns its database and nothing else.
                let _ =
                    sqlx::query("CREATE ROLE changegate LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                        .execute(&mut conn)
                        .await;
                sqlx::query(&format!("CREATE DATABASE {name} OWNER changegate"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            });
            let base = admin
                .rsplit_once('/')
                .unwrap()
                .0
                .replacen("postgres@", "changegate@", 1);
            TestDatabase {
                url: format!("{base}/{name}"),
                _dir: None,
            }
        }
        other => panic!("unknown backend {other}"),
    }
}

/// Runs `case` on a fresh, migrated store on each of `backends`, with the
/// database's URL (to reach it directly) and the backend's name.
pub fn with_store<F, Fut>(backends: &[&'static str], case: F)
where
    F: Fn(changegate::store::Store, String, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for &backend in backends {
        let database = fresh(backend);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = changegate::store::Store::connect(&database.url)
                .await
                .unwrap();
            store.migrate().await.unwrap();
            case(store.clone(), database.url.clone(), backend).await;
            store.close().await;
        });
    }
}
