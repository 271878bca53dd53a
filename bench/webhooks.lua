-- wrk script of the ingest and system benches: every request is a distinct signed
-- webhook.
--
-- wrk's Lua has no HMAC, so wrkload.py pre-signs a pool of bodies and writes one file per
-- thread (WRK_POOL-<thread>.tsv: webhook id, signature, body per line); a thread
-- walks its own file, so no id is sent twice unless the pool runs out (counted as
-- "wrapped": the bench then says so). WRK_ONCE=1 sends a thread's file once: past its
-- last line a connection waits instead of sending (delay()), and the thread stops
-- once every line is answered (a burst of exactly the pool's size). WRK_RATE > 0
-- paces the thread at its share of that rate (requests/s) through the delay() hook
-- instead of sending as fast as the connections allow. done() writes the status
-- counts, wrk's latency percentiles and the delivery ids answered 2xx to WRK_OUT
-- (JSON) and WRK_OUT.ids.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

local pool, n, i, answered = {}, 0, 0, 0
statuses, ids, wrapped = {}, {}, 0
local interval, next_at
local once = os.getenv("WRK_ONCE") == "1"

function init(args)
  local path = os.getenv("WRK_PATH") or "/webhooks/shopify"
  local shop = os.getenv("WRK_SHOP")
  local topic = os.getenv("WRK_TOPIC") or "orders/create"
  for line in io.lines(os.getenv("WRK_POOL") .. "-" .. id .. ".tsv") do
    local a = line:find("\t", 1, true)
    local b = line:find("\t", a + 1, true)
    n = n + 1
    pool[n] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Shopify-Topic"] = topic,
      ["X-Shopify-Shop-Domain"] = shop,
      ["X-Shopify-Webhook-Id"] = line:sub(1, a - 1),
      ["X-Shopify-Hmac-Sha256"] = line:sub(a + 1, b - 1),
    }, line:sub(b + 1))
  end
  local rate = tonumber(os.getenv("WRK_RATE") or "0")
  local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
  if rate > 0 then
    interval = 1000 * nthreads / rate
  end
end

-- wrk calls request() once on thread 0 before it opens any connection, to check the
-- request it returns (script_verify_request in wrk 4.1); that call sends nothing, so
-- it must not use up a line: in once mode the line was never sent.
local verified = false

function request()
  if id == 0 and not verified then
    verified = true
    return pool[1]
  end
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return pool[i]
end

-- Longer than any run: a connection that would send past the pool's end in once mode
-- waits instead; the thread stops before it would wake.
local PARKED_MS = 3600 * 1000

function delay()
  if once and i >= n then
    return PARKED_MS
  end
  if not interval then
    return 0
  end
  local t = now_ms()
  if not next_at or next_at < t - 1000 then
    next_at = t -- (re)start the schedule; a stall is not made up for with a burst
  end
  next_at = next_at + interval
  local d = next_at - t
  if d < 0 then
    return 0
  end
  return d
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  -- Stopping at the first answer after the last line was sent (as before) dropped the
  -- requests still in flight on the thread's other connections: a burst of 1,000
  -- stored 999.
  if once and answered >= n then
    wrk.thread:stop()
  end
  if status >= 200 and status < 300 and body then
    local did = body:match('"delivery_id"%s*:%s*"([^"]+)"')
    if did then
      ids[#ids + 1] = did
    end
  end
end

function done(summary, latency, requests)
  local out = os.getenv("WRK_OUT")
  local counts, total_wrapped = {}, 0
  local f = io.open(out .. ".ids", "w")
  for _, t in ipairs(threads) do
    for code, c in pairs(t:get("statuses")) do
      counts[code] = (counts[code] or 0) + c
    end
    for _, did in ipairs(t:get("ids")) do
      f:write(did, "\n")
    end
    total_wrapped = total_wrapped + t:get("wrapped")
  end
  f:close()
  local parts = {}
  for code, c in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', code, c)
  end
  local e = summary.errors
  local j = io.open(out, "w")
  j:write(string.format(
    '{"requests": %d, "duration_us": %d, "statuses": {%s}, "wrapped": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, table.concat(parts, ", "), total_wrapped,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
  j:close()
end
