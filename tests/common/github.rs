//! A fake GitHub REST API (wiremock) backed by a stateful in-memory model of
//! one repository's pull requests, reviews, commit statuses and teams. It
//! answers like GitHub: status codes, `per_page` capped pagination with a
//! `Link` header, rate-limit headers. Plus builders for webhook deliveries
//! made from the shared fixtures, signed like GitHub signs them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use git2::Oid;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::server::{self, Server, GITHUB_SECRET};
use super::{db, TestRepo};

/// The repository the fake serves.
pub const REPOSITORY: &str = "acme/infra";

/// Its numeric id, as `GET /repos/{owner}/{repo}` and payloads give it.
pub const REPOSITORY_ID: u64 = 4_242_001;

/// The App installation deliveries carry (tests with App auth configure it).
pub const INSTALLATION_ID: u64 = 42;

/// One answer to force on the next matching request (e.g. a rate limit).
#[derive(Clone)]
pub struct Forced {
    /// Only requests whose `METHOD /path` starts with this.
    pub prefix: String,
    /// The status to answer.
    pub status: u16,
    /// Headers to send with it.
    pub headers: Vec<(String, String)>,
}

/// GitHub's state, as the fake knows it.
#[derive(Default)]
pub struct State {
    /// Pull requests by number (REST shape).
    pub pulls: BTreeMap<u64, Value>,
    /// Reviews by pull request (REST shape, oldest first).
    pub reviews: BTreeMap<u64, Vec<Value>>,
    /// Commits by pull request (REST shape).
    pub commits: BTreeMap<u64, Vec<Value>>,
    /// Every status posted: (sha, body), in order.
    pub statuses: Vec<(String, Value)>,
    /// Members of `org/slug`.
    pub teams: BTreeMap<String, BTreeSet<String>>,
    /// Answers to force, first match first.
    pub forced: VecDeque<Forced>,
    /// `METHOD /path?query` of every request, with the unix time (ms) it came.
    pub requests: Vec<(String, i64)>,
    /// The largest page served (GitHub caps `per_page` at 100).
    pub max_per_page: usize,
    /// The bearer token API calls must carry (a plain token, or the
    /// installation token minted for the App).
    pub token: String,
    /// A GitHub App: (app id, installation id) that may mint `token`.
    pub app: Option<(u64, u64)>,
    /// Installation tokens minted: (token, expiry in unix ms).
    pub minted: Vec<(String, i64)>,
    /// When set, each mint gives a new token living this many seconds
    /// (else `token`, for an hour).
    pub app_token_secs: Option<i64>,
    /// JWT claims presented to mint installation tokens.
    pub jwt_claims: Vec<Value>,
    /// Logins with write access to the repository; everyone else reads.
    pub writers: BTreeSet<String>,
    /// Comments by pull request (REST shape, oldest first).
    pub comments: BTreeMap<u64, Vec<Value>>,
    /// The last comment id given.
    pub last_comment_id: u64,
}

impl State {
    /// The number in a path, if it names a pull request GitHub has.
    fn known_pull(&self, number: &str) -> Option<u64> {
        number
            .parse::<u64>()
            .ok()
            .filter(|n| self.pulls.contains_key(n))
    }

    /// Whether `token` authenticates now: the plain token, or an
    /// installation token minted and not yet expired.
    pub fn token_ok(&self, token: &str) -> bool {
        (self.app_token_secs.is_none() && token == self.token)
            || self
                .minted
                .iter()
                .any(|(t, expires)| t == token && *expires > now_ms())
    }
}

/// The login a plain token acts as (`GET /user`).
pub const BOT_LOGIN: &str = "changegate-bot";

/// GitHub's answer to a comment body over 65,536 characters.
fn body_too_long() -> ResponseTemplate {
    ResponseTemplate::new(422).set_body_json(json!({
        "message": "Validation Failed",
        "errors": [{"resource": "IssueComment", "code": "unprocessable", "field": "data",
                    "message": "Body is too long (maximum is 65536 characters)"}],
        "documentation_url": "https://docs.github.com/rest/issues/comments#create-an-issue-comment"
    }))
}

/// A comment in GitHub's REST shape, written by `login` (or by the App).
pub fn comment_json(id: u64, number: u64, login: &str, app: Option<u64>, body: &str) -> Value {
    json!({
        "id": id,
        "node_id": format!("IC_{id}"),
        "url": format!("https://api.github.com/repos/{REPOSITORY}/issues/comments/{id}"),
        "html_url": format!("https://github.com/{REPOSITORY}/pull/{number}#issuecomment-{id}"),
        "issue_url": format!("https://api.github.com/repos/{REPOSITORY}/issues/{number}"),
        "body": body,
        "user": {"login": login, "id": 1000 + id, "type": if app.is_some() { "Bot" } else { "User" }},
        "author_association": "NONE",
        "created_at": rfc3339(now_ms() as u64 / 1000),
        "updated_at": rfc3339(now_ms() as u64 / 1000),
        "performed_via_github_app": app.map(|id| json!({"id": id, "slug": "changegate", "name": "changegate"})),
    })
}

/// The test cast's GitHub logins, all collaborators with write access.
pub const WRITERS: [&str; 5] = ["alice-gh", "bob-gh", "carol-gh", "dave-gh", "erin-gh"];

/// The token test servers get in `CG_TEST_GH_TOKEN`.
pub const API_TOKEN: &str = "gh-test-token";

/// The claims of a JWT (unverified: the fake only checks their shape).
fn jwt_claims(token: &str) -> Option<Value> {
    use base64::Engine;
    let mut parts = token.split('.');
    let header = parts.next()?;
    let claims = parts.next()?;
    parts.next()?;
    let decode = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
    };
    let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
    (header["alg"] == "RS256").then_some(())?;
    serde_json::from_slice(&decode(claims)?).ok()
}

/// The running fake.
pub struct FakeGithub {
    /// Its base URL, for `github.api_url`.
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _server: MockServer,
    _runtime: tokio::runtime::Runtime,
}

struct Api {
    state: Arc<Mutex<State>>,
    base: Arc<Mutex<String>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({
        "message": "Not Found",
        "documentation_url": "https://docs.github.com/rest"
    }))
}

impl Api {
    /// One page of `items`, with GitHub's `Link` header.
    fn page(&self, req: &Request, items: &[Value]) -> ResponseTemplate {
        let query: BTreeMap<String, String> = req.url.query_pairs().into_owned().collect();
        let cap = self.state.lock().unwrap().max_per_page;
        let per_page = query
            .get("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(30usize)
            .clamp(1, cap);
        let page = query
            .get("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1usize)
            .max(1);
        let last = items.len().div_ceil(per_page).max(1);
        let slice: Vec<&Value> = items
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let base = self.base.lock().unwrap().clone();
        let link = |p: usize, rel: &str| {
            let mut q = query.clone();
            q.insert("page".into(), p.to_string());
            q.insert("per_page".into(), per_page.to_string());
            let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("<{base}{}?{}>; rel=\"{rel}\"", req.url.path(), qs.join("&"))
        };
        let mut links = Vec::new();
        if page < last {
            links.push(link(page + 1, "next"));
            links.push(link(last, "last"));
        }
        if page > 1 {
            links.push(link(1, "first"));
            links.push(link(page - 1, "prev"));
        }
        let mut r = ResponseTemplate::new(200).set_body_json(slice);
        if !links.is_empty() {
            r = r.insert_header("link", links.join(", "));
        }
        r
    }
}

impl Respond for Api {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_string();
        let call = format!("{} {}", req.method, path);
        let full = match req.url.query() {
            Some(q) => format!("{call}?{q}"),
            None => call.clone(),
        };
        let mut state = self.state.lock().unwrap();
        state.requests.push((full, now_ms()));
        if let Some(i) = state
            .forced
            .iter()
            .position(|f| call.starts_with(&f.prefix))
        {
            let f = state.forced.remove(i).unwrap();
            let mut r = ResponseTemplate::new(f.status).set_body_json(json!({
                "message": "API rate limit exceeded",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
            }));
            for (k, v) in f.headers {
                r = r.insert_header(k.as_str(), v.as_str());
            }
            return r;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let repo: Vec<&str> = REPOSITORY.split('/').collect();
        let bearer = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        if let ("POST", ["app", "installations", id, "access_tokens"]) =
            (req.method.as_str(), parts.as_slice())
        {
            let Some((app, installation)) = state.app else {
                return not_found();
            };
            let claims = jwt_claims(&bearer);
            let iss_ok = claims.as_ref().is_some_and(|c| {
                c["iss"].as_str() == Some(app.to_string().as_str()) || c["iss"] == app
            });
            if !iss_ok || id.parse::<u64>().ok() != Some(installation) {
                return ResponseTemplate::new(401)
                    .set_body_json(json!({"message": "A JSON web token could not be decoded"}));
            }
            state.jwt_claims.push(claims.unwrap());
            let lifetime = state.app_token_secs.unwrap_or(3600);
            let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(lifetime);
            let token = match state.app_token_secs {
                Some(_) => format!("ghs_minted_{:04}", state.minted.len() + 1),
                None => state.token.clone(),
            };
            state
                .minted
                .push((token.clone(), now_ms() + lifetime * 1000));
            return ResponseTemplate::new(201).set_body_json(json!({
                "token": token,
                "expires_at": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "permissions": {"statuses": "write", "pull_requests": "read", "members": "read"},
                "repository_selection": "selected",
            }));
        }
        if !state.token_ok(&bearer) {
            return ResponseTemplate::new(401).set_body_json(json!({
                "message": "Bad credentials",
                "documentation_url": "https://docs.github.com/rest"
            }));
        }
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["repos", o, n]) if [*o, *n] == repo[..] => {
                ResponseTemplate::new(200).set_body_json(repository_json(REPOSITORY))
            }
            ("GET", ["repos", o, n, "pulls"]) if [*o, *n] == repo[..] => {
                let wanted = req
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "state")
                    .map_or("open".to_string(), |(_, v)| v.into_owned());
                let items: Vec<Value> = state
                    .pulls
                    .values()
                    .filter(|p| wanted == "all" || p["state"] == wanted.as_str())
                    .cloned()
                    .collect();
                drop(state);
                self.page(req, &items)
            }
            ("GET", ["repos", o, n, "pulls", number]) if [*o, *n] == repo[..] => {
                match number.parse::<u64>().ok().and_then(|n| state.pulls.get(&n)) {
                    Some(p) => ResponseTemplate::new(200).set_body_json(p),
                    None => not_found(),
                }
            }
            ("GET", ["repos", o, n, "pulls", number, "reviews"]) if [*o, *n] == repo[..] => {
                let Some(number) = state.known_pull(number) else {
                    return not_found();
                };
                let items = state.reviews.get(&number).cloned().unwrap_or_default();
                drop(state);
                self.page(req, &items)
            }
            ("GET", ["repos", o, n, "pulls", number, "commits"]) if [*o, *n] == repo[..] => {
                let Some(number) = state.known_pull(number) else {
                    return not_found();
                };
                let items = state.commits.get(&number).cloned().unwrap_or_default();
                drop(state);
                self.page(req, &items)
            }
            ("POST", ["repos", o, n, "statuses", sha]) if [*o, *n] == repo[..] => {
                let Ok(body) = req.body_json::<Value>() else {
                    return ResponseTemplate::new(400)
                        .set_body_json(json!({"message": "Problems parsing JSON"}));
                };
                let valid = ["error", "failure", "pending", "success"]
                    .contains(&body["state"].as_str().unwrap_or(""));
                if !valid
                    || body["description"]
                        .as_str()
                        .is_some_and(|d| d.chars().count() > 140)
                {
                    return ResponseTemplate::new(422)
                        .set_body_json(json!({"message": "Validation Failed"}));
                }
                state.statuses.push((sha.to_string(), body.clone()));
                ResponseTemplate::new(201).set_body_json(json!({
                    "state": body["state"], "description": body["description"], "context": body["context"],
                }))
            }
            ("GET", ["repos", o, n, "collaborators", login, "permission"])
                if [*o, *n] == repo[..] =>
            {
                // GitHub answers any user; a non-collaborator of a public repository reads.
                let (permission, role) = if state.writers.contains(*login) {
                    ("write", "write")
                } else {
                    ("read", "read")
                };
                ResponseTemplate::new(200).set_body_json(json!({
                    "permission": permission,
                    "role_name": role,
                    "user": {"login": login, "type": "User"},
                }))
            }
            ("GET", ["user"]) => {
                if state.app.is_some() {
                    // An installation token has no user.
                    return ResponseTemplate::new(403).set_body_json(json!({
                        "message": "Resource not accessible by integration",
                        "documentation_url": "https://docs.github.com/rest/users/users#get-the-authenticated-user"
                    }));
                }
                ResponseTemplate::new(200)
                    .set_body_json(json!({"login": BOT_LOGIN, "id": 7, "type": "User"}))
            }
            ("GET", ["repos", o, n, "issues", number, "comments"]) if [*o, *n] == repo[..] => {
                let Some(number) = state.known_pull(number) else {
                    return not_found();
                };
                let items = state.comments.get(&number).cloned().unwrap_or_default();
                drop(state);
                self.page(req, &items)
            }
            ("POST", ["repos", o, n, "issues", number, "comments"]) if [*o, *n] == repo[..] => {
                let Some(number) = state.known_pull(number) else {
                    return not_found();
                };
                let Some(body) = req
                    .body_json::<Value>()
                    .ok()
                    .and_then(|b| b["body"].as_str().map(str::to_string))
                else {
                    return ResponseTemplate::new(422).set_body_json(
                        json!({"message": "Invalid request.\n\n\"body\" wasn't supplied."}),
                    );
                };
                if body.chars().count() > 65_536 {
                    return body_too_long();
                }
                state.last_comment_id += 1;
                let id = state.last_comment_id;
                let app = state.app.map(|(app, _)| app);
                let login = if app.is_some() {
                    "changegate[bot]"
                } else {
                    BOT_LOGIN
                };
                let c = comment_json(id, number, login, app, &body);
                state.comments.entry(number).or_default().push(c.clone());
                ResponseTemplate::new(201).set_body_json(c)
            }
            ("PATCH", ["repos", o, n, "issues", "comments", id]) if [*o, *n] == repo[..] => {
                let Some(body) = req
                    .body_json::<Value>()
                    .ok()
                    .and_then(|b| b["body"].as_str().map(str::to_string))
                else {
                    return ResponseTemplate::new(422)
                        .set_body_json(json!({"message": "Invalid request."}));
                };
                if body.chars().count() > 65_536 {
                    return body_too_long();
                }
                let id: u64 = id.parse().unwrap_or(0);
                let found = state
                    .comments
                    .values_mut()
                    .flat_map(|cs| cs.iter_mut())
                    .find(|c| c["id"] == id);
                match found {
                    Some(c) => {
                        c["body"] = json!(body);
                        c["updated_at"] = json!(rfc3339(now_ms() as u64 / 1000));
                        ResponseTemplate::new(200).set_body_json(c.clone())
                    }
                    None => not_found(),
                }
            }
            ("GET", ["orgs", org, "teams", slug, "memberships", login]) => {
                let team = format!("{org}/{slug}");
                if state.teams.get(&team).is_some_and(|m| m.contains(*login)) {
                    ResponseTemplate::new(200)
                        .set_body_json(json!({"state": "active", "role": "member"}))
                } else {
                    not_found()
                }
            }
            _ => not_found(),
        }
    }
}

impl FakeGithub {
    pub fn start() -> FakeGithub {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State {
            max_per_page: 100,
            token: API_TOKEN.into(),
            writers: WRITERS.iter().map(|w| w.to_string()).collect(),
            ..State::default()
        }));
        let base = Arc::new(Mutex::new(String::new()));
        let server = runtime.block_on(async {
            let server = MockServer::start().await;
            Mock::given(wiremock::matchers::any())
                .respond_with(Api {
                    state: state.clone(),
                    base: base.clone(),
                })
                .mount(&server)
                .await;
            server
        });
        *base.lock().unwrap() = server.uri();
        FakeGithub {
            url: server.uri(),
            state,
            _server: server,
            _runtime: runtime,
        }
    }

    /// The `[github]` section pointing at this fake.
    pub fn config_section(&self) -> String {
        format!(
            "[github]\napi_url = {:?}\nrepository = {REPOSITORY:?}\ntoken_env = \"CG_TEST_GH_TOKEN\"\nwebhook_secret_env = \"CG_TEST_GH_SECRET\"\nsync_interval = \"1h\"\nteam_ttl = \"1h\"\n",
            self.url
        )
    }

    /// The `[github]` section with GitHub App authentication (app 1234,
    /// installation [`INSTALLATION_ID`]) and a fresh RSA key, instead of the
    /// plain token; keep the directory while the server runs.
    pub fn app_section(&self) -> (String, tempfile::TempDir) {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("app.pem");
        let made = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let section = self.config_section().replace(
            "token_env = \"CG_TEST_GH_TOKEN\"\n",
            &format!(
                "app_id = 1234\ninstallation_id = {INSTALLATION_ID}\nprivate_key_path = {key:?}\n"
            ),
        );
        (section, keys)
    }

    /// Statuses posted for `context` on `sha`: (state, description), in order.
    pub fn statuses(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        self.state
            .lock()
            .unwrap()
            .statuses
            .iter()
            .filter(|(s, b)| s == sha && b["context"] == context)
            .map(|(_, b)| {
                (
                    b["state"].as_str().unwrap().to_string(),
                    b["description"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The comments on pull request `number`, oldest first.
    pub fn comments(&self, number: u64) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .comments
            .get(&number)
            .cloned()
            .unwrap_or_default()
    }

    /// Someone else comments on pull request `number`.
    pub fn add_comment(&self, number: u64, login: &str, body: &str) {
        let mut state = self.state.lock().unwrap();
        state.last_comment_id += 1;
        let c = comment_json(state.last_comment_id, number, login, None, body);
        state.comments.entry(number).or_default().push(c);
    }

    /// Requests seen whose `METHOD /path` starts with `prefix`, with their times.
    pub fn requests(&self, prefix: &str) -> Vec<(String, i64)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(r, _)| r.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn fixture(name: &str) -> Value {
    let bytes = std::fs::read(
        super::project_root()
            .join("../shared/fixtures/github-webhooks")
            .join(name),
    )
    .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A server on `repo` and a fresh `backend` database, with `[github]`
/// pointing at `github` and the gate fixture's identities.
pub fn start_server(
    repo: &TestRepo,
    backend: &str,
    github: &FakeGithub,
) -> (Server, db::TestDatabase) {
    let database = db::fresh(backend);
    let server = server::start_with(
        repo.path(),
        &database.url,
        &super::gate_fixture::tokens(),
        "",
        &github.config_section(),
    );
    (server, database)
}

/// The configured repository in GitHub's shape, under `full_name`
/// (another name with the same id is the same repository, renamed).
pub fn repository_json(full_name: &str) -> Value {
    let mut r = fixture("pull_request.opened.json")["repository"].clone();
    let (owner, name) = full_name.split_once('/').unwrap();
    r["id"] = json!(REPOSITORY_ID);
    r["full_name"] = json!(full_name);
    r["name"] = json!(name);
    r["owner"]["login"] = json!(owner);
    r
}

/// Another repository that the same App or organisation secret covers.
pub fn foreign_repository_json(full_name: &str, id: u64) -> Value {
    let mut r = repository_json(full_name);
    r["id"] = json!(id);
    r
}

/// Makes `body` a delivery from `repository` (a value from
/// [`repository_json`] or [`foreign_repository_json`]).
pub fn from_repository(body: &[u8], repository: &Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["repository"] = repository.clone();
    serde_json::to_vec(&v).unwrap()
}

/// A pull request in GitHub's shape (from the `pull_request.opened` fixture).
pub fn pull(number: u64, head: Oid, base: Oid, opener: &str) -> Value {
    let mut pr = fixture("pull_request.opened.json")["pull_request"].clone();
    pr["base"]["repo"] = repository_json(REPOSITORY);
    pr["number"] = json!(number);
    pr["head"]["sha"] = json!(head.to_string());
    pr["head"]["ref"] = json!(format!("pr-{number}"));
    pr["base"]["sha"] = json!(base.to_string());
    pr["base"]["ref"] = json!("main");
    pr["user"]["login"] = json!(opener);
    pr
}

/// A review in the REST shape (`GET …/reviews`), from the review fixture.
pub fn review(id: u64, reviewer: &str, state: &str, commit: Oid, at_secs: u64) -> Value {
    let mut r = fixture("pull_request_review.submitted.json")["review"].clone();
    r["id"] = json!(id);
    r["user"]["login"] = json!(reviewer);
    r["state"] = json!(state.to_ascii_uppercase());
    r["commit_id"] = json!(commit.to_string());
    r["submitted_at"] = json!(rfc3339(at_secs));
    r
}

/// A pull request commit in the REST shape (`GET …/pulls/{n}/commits`).
pub fn commit(sha: Oid, author: &str, committer: &str) -> Value {
    serde_json::json!({
        "sha": sha.to_string(),
        "commit": {"message": "change", "author": {"name": author}, "committer": {"name": committer}},
        "author": {"login": author, "type": "User"},
        "committer": {"login": committer, "type": "User"},
    })
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A `pull_request` delivery body (from the fixture of the same action).
pub fn pull_request_event(action: &str, pr: &Value, sender: &str) -> Vec<u8> {
    let file = match action {
        "synchronize" => "pull_request.synchronize.json",
        "closed" => "pull_request.closed.json",
        _ => "pull_request.opened.json",
    };
    let mut body = fixture(file);
    body["action"] = json!(action);
    body["number"] = pr["number"].clone();
    body["pull_request"] = pr.clone();
    body["sender"]["login"] = json!(sender);
    home(&mut body);
    serde_json::to_vec(&body).unwrap()
}

/// A delivery from the configured repository, through the App's installation.
fn home(body: &mut Value) {
    body["repository"] = repository_json(REPOSITORY);
    body["installation"] = json!({"id": INSTALLATION_ID});
}

/// A `pull_request_review` delivery body: submitted (with the webhook's
/// lower-case state) or dismissed.
pub fn review_event(action: &str, pr: &Value, review: &Value) -> Vec<u8> {
    let file = if action == "dismissed" {
        "pull_request_review.dismissed.json"
    } else {
        "pull_request_review.submitted.json"
    };
    let mut body = fixture(file);
    body["action"] = json!(action);
    body["pull_request"] = pr.clone();
    let mut r = review.clone();
    r["state"] = json!(if action == "dismissed" {
        "dismissed".to_string()
    } else {
        review["state"].as_str().unwrap().to_ascii_lowercase()
    });
    body["review"] = r;
    body["sender"]["login"] = review["user"]["login"].clone();
    home(&mut body);
    serde_json::to_vec(&body).unwrap()
}

/// A `push` delivery body for `main` (from the new-branch fixture).
pub fn push_event(before: Oid, after: Oid) -> Vec<u8> {
    let mut body = fixture("push.with-new-branch.json");
    body["ref"] = json!("refs/heads/main");
    body["before"] = json!(before.to_string());
    body["after"] = json!(after.to_string());
    body["created"] = json!(false);
    home(&mut body);
    serde_json::to_vec(&body).unwrap()
}

/// `sha256=<hex>` over `body` with the test secret.
pub fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a delivery; returns the status code.
pub fn deliver(server: &Server, event: &str, delivery: &str, body: &[u8], signature: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{}/webhooks/github", server.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Delivers a correctly signed body and expects 202.
pub fn deliver_signed(server: &Server, event: &str, delivery: &str, body: &[u8]) {
    assert_eq!(
        deliver(server, event, delivery, body, &sign(body)),
        202,
        "{event} {delivery}"
    );
}

/// Delivers a signed `pull_request` event (`action` by `sender`).
pub fn deliver_pr(server: &Server, delivery: &str, action: &str, pr: &Value, sender: &str) {
    deliver_signed(
        server,
        "pull_request",
        delivery,
        &pull_request_event(action, pr, sender),
    );
}

/// Delivers a signed `pull_request_review` event (`submitted` or `dismissed`).
pub fn deliver_review(server: &Server, delivery: &str, action: &str, pr: &Value, review: &Value) {
    deliver_signed(
        server,
        "pull_request_review",
        delivery,
        &review_event(action, pr, review),
    );
}

/// Pull requests made the way GitHub makes them: a branch `pr-N` whose head
/// is also `refs/pull/N/head`; `main` is left as it was.
impl TestRepo {
    pub fn main_tip(&self) -> Oid {
        self.repo.refname_to_id("refs/heads/main").unwrap()
    }

    /// Commits `files` onto pull request `number` (starting it from `main`
    /// if new) as `author`; returns the new head.
    pub fn push_to_pr(&self, number: u64, files: &[(&str, &str)], author: &str) -> Oid {
        let branch = format!("pr-{number}");
        let main = self.main_tip();
        let start = self
            .repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .unwrap_or(main);
        self.branch(&branch, start);
        for (path, content) in files {
            self.write(path, content);
        }
        let head = self.commit_as(
            &format!("PR #{number}"),
            author,
            &format!("{author}@example.com"),
        );
        self.repo
            .reference(
                &format!("refs/pull/{number}/head"),
                head,
                true,
                "pull request head",
            )
            .unwrap();
        self.repo.set_head("refs/heads/main").unwrap();
        self.repo
            .checkout_head(Some(
                git2::build::CheckoutBuilder::new()
                    .force()
                    .remove_untracked(true),
            ))
            .unwrap();
        head
    }

    /// Commits onto pull request `number`'s head a root tree with folder
    /// `name` set to tree `folder` (or removed), written object by object,
    /// without a work tree (a tree bomb cannot be checked out); returns the
    /// new head.
    pub fn push_folder_to_pr(
        &self,
        number: u64,
        name: &str,
        folder: Option<Oid>,
        author: &str,
    ) -> Oid {
        let parent = self
            .repo
            .find_reference(&format!("refs/pull/{number}/head"))
            .unwrap()
            .peel_to_commit()
            .unwrap();
        let mut root = self
            .repo
            .treebuilder(Some(&parent.tree().unwrap()))
            .unwrap();
        match folder {
            Some(folder) => root.insert(name, folder, 0o040000).map(drop),
            None => root.remove(name),
        }
        .unwrap();
        let tree = self.repo.find_tree(root.write().unwrap()).unwrap();
        let sig = git2::Signature::now(author, &format!("{author}@example.com")).unwrap();
        let head = self
            .repo
            .commit(
                None,
                &sig,
                &sig,
                &format!("PR #{number}"),
                &tree,
                &[&parent],
            )
            .unwrap();
        for name in [
            format!("refs/pull/{number}/head"),
            format!("refs/heads/pr-{number}"),
        ] {
            self.repo
                .reference(&name, head, true, "pull request head")
                .unwrap();
        }
        head
    }

    /// Fast-forwards `main` to pull request `number`'s head (a merge).
    pub fn merge_pr(&self, number: u64) -> Oid {
        let head = self
            .repo
            .refname_to_id(&format!("refs/pull/{number}/head"))
            .unwrap();
        self.repo
            .reference("refs/heads/main", head, true, "merge")
            .unwrap();
        self.repo
            .checkout_head(Some(
                git2::build::CheckoutBuilder::new()
                    .force()
                    .remove_untracked(true),
            ))
            .unwrap();
        head
    }
}
