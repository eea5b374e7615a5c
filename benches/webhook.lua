-- wrk load for `POST /webhooks/github`: one signed delivery body, sent with
-- a fresh X-GitHub-Delivery on every request, so each one is a new
-- delivery that must be stored durably before its 202.
--
--   CHANGEGATE_WRK_BODY=body.json CHANGEGATE_WRK_SIGNATURE=sha256=<hex> \
--     wrk -t2 -c64 -d20s -s benches/webhook.lua http://127.0.0.1:8080
--
-- The signature covers the body only (as GitHub's does), so one signature
-- serves every request. `cargo bench --bench ingest` writes both and runs
-- this script when `wrk` is installed. The summary ends with a line that
-- bench parses: `webhook-lua: sent=… accepted=… other=… duration_us=… p50_us=… p99_us=…`.

local body_path = os.getenv("CHANGEGATE_WRK_BODY")
local signature = os.getenv("CHANGEGATE_WRK_SIGNATURE")
assert(body_path and signature, "set CHANGEGATE_WRK_BODY and CHANGEGATE_WRK_SIGNATURE")

local file = assert(io.open(body_path, "rb"))
local body = file:read("*a")
file:close()

local threads = {}
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))

function setup(thread)
  thread:set("name", run .. "-t" .. #threads)
  table.insert(threads, thread)
end

-- Globals, so that done() can read each thread's counts.
sent = 0
accepted = 0
other = 0

function init(args)
  wrk.method = "POST"
  wrk.path = "/webhooks/github"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-GitHub-Event"] = "pull_request_review"
  wrk.headers["X-Hub-Signature-256"] = signature
  wrk.body = body
end

function request()
  sent = sent + 1
  wrk.headers["X-GitHub-Delivery"] = name .. "-" .. sent
  return wrk.format()
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local s, a, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    s = s + thread:get("sent")
    a = a + thread:get("accepted")
    o = o + thread:get("other")
  end
  io.write(string.format(
    "webhook-lua: sent=%d accepted=%d other=%d duration_us=%d p50_us=%d p99_us=%d\n",
    s, a, o, summary.duration, latency:percentile(50), latency:percentile(99)))
end
