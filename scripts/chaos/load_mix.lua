-- wrk script for scripts/chaos/load_serve.sh: a seeded mix of hits, misses and bad requests.
--   HITS (env, comma-separated paths) are objects known to exist; misses are variants of
--   ORIGINALS with parameters drawn at random (practically never the same twice); bad
--   requests are invalid parameters and hostile paths. Shares: LOAD_HIT/LOAD_MISS percent,
--   the rest bad. Status counts per thread are summed in done() as one JSON line.
local threads = {}
local counter = 0

local function split(s)
  local out = {}
  for item in string.gmatch(s or "", "[^,]+") do out[#out + 1] = item end
  return out
end

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  hits = split(os.getenv("LOAD_HITS"))
  originals = split(os.getenv("LOAD_ORIGINALS"))
  hit_share = tonumber(os.getenv("LOAD_HIT") or "60")
  miss_share = tonumber(os.getenv("LOAD_MISS") or "30")
  math.randomseed(tonumber(os.getenv("LOAD_SEED") or "18") * 1000 + id)
  statuses = {}
  bad = { "/orig/photo-000.jpg@12z", "/orig/photo-001.jpg@0w.webp", "/orig/photo-002.jpg@5000w_1w",
          "/..%2f..%2fetc/passwd", "/orig/photo-003.jpg@100w.bmp", "/orig/nothing.jpg@100w.webp" }
  formats = { ".webp", ".jpg", ".png", "" }
end

function request()
  local roll = math.random(100)
  local path
  if roll <= hit_share and #hits > 0 then
    path = hits[math.random(#hits)]
  elseif roll <= hit_share + miss_share and #originals > 0 then
    path = string.format("%s@%dw_%dh_1e_%dq%s", originals[math.random(#originals)],
      math.random(16, 600), math.random(16, 600), math.random(30, 95), formats[math.random(#formats)])
  else
    path = bad[math.random(#bad)]
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
    statuses["503-without-retry-after"] = (statuses["503-without-retry-after"] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, n in pairs(s) do total[tostring(status)] = (total[tostring(status)] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', status, n) end
  io.write(string.format('LOADJSON {"requests": %d, "duration_s": %.2f, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, ' ..
    '"latency_ms": {"p50": %.2f, "p90": %.2f, "p99": %.2f, "max": %.2f}, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, table.concat(parts, ", ")))
end
