-- wrk script of bench/loyalty/run.py: every request is a distinct redemption.
--
-- POST /v1/accounts/<customer>/redemptions {"reward_id": "five-off"} with the bench's
-- API key (WRK_AUTH) and an Idempotency-Key of its own (WRK_TAG, the thread, a counter),
-- so no request is the replay of another. WRK_CUSTOMER set: every request is on that one
-- (hot) account; else the customers c0 .. c<WRK_ACCOUNTS - 1> in turn, each thread
-- starting at its own offset. done() writes the status counts and wrk's latency
-- percentiles to WRK_OUT (JSON, as bench/webhooks.lua writes them).

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

statuses = {}
local n = 0
local auth, tag, hot, accounts, body

function init(args)
  auth = os.getenv("WRK_AUTH")
  tag = os.getenv("WRK_TAG") .. "-" .. id
  hot = os.getenv("WRK_CUSTOMER")
  if hot == "" then
    hot = nil
  end
  accounts = tonumber(os.getenv("WRK_ACCOUNTS") or "200")
  body = '{"reward_id":"five-off"}'
end

function request()
  n = n + 1
  local customer = hot or ("c" .. ((n * 7 + id * 101) % accounts))
  return wrk.format("POST", "/v1/accounts/" .. customer .. "/redemptions", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth,
    ["Idempotency-Key"] = tag .. "-" .. n,
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for code, c in pairs(t:get("statuses")) do
      counts[code] = (counts[code] or 0) + c
    end
  end
  local parts = {}
  for code, c in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', code, c)
  end
  local e = summary.errors
  local j = io.open(os.getenv("WRK_OUT"), "w")
  j:write(string.format(
    '{"requests": %d, "duration_us": %d, "statuses": {%s}, "wrapped": 0, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
  j:close()
end
