//! The Lua scripts the cell runs in its Redis. Each is one atomic round trip, invoked by SHA
//! (`EVALSHA`) and reloaded automatically by redis-rs on `NOSCRIPT`.

use std::sync::LazyLock;

use redis::Script;

/// Lua shared by the scripts that change tenant data: keeps the tenant's key count and digest
/// (fields `keys` and `digest` of its meta hash) in step with every change, as
/// `cellstack_api::admin::Checksum` defines them (XOR of SHA-1 over suffix, zero byte, value).
const DIGEST_LUA: &str = r#"
local ZERO = '0000000000000000000000000000000000000000'
local function xor40(a, b)
  local out = {}
  for i = 1, 33, 8 do
    out[#out + 1] = bit.tohex(bit.bxor(tonumber(a:sub(i, i + 7), 16), tonumber(b:sub(i, i + 7), 16)), 8)
  end
  return table.concat(out)
end
-- old/new: the key's value before and after (false or nil: absent). Returns the new figures.
local function account(n, d, suffix, old, new)
  if old == new then return n, d end
  if old then d = xor40(d, redis.sha1hex(suffix .. '\0' .. old)); n = n - 1 end
  if new then d = xor40(d, redis.sha1hex(suffix .. '\0' .. new)); n = n + 1 end
  return n, d
end
"#;

/// A tenant data write that re-checks the tenant's state atomically, so a fence or move set
/// after admission still stops it. Mirrors `tenant_state::check` for writes. Keeps the tenant's
/// key count and digest current.
///
/// KEYS: meta, data key, change set. ARGV: request epoch (-1: none), op (set|del|incr|cas),
/// value or amount, key suffix (recorded in the change set while tracking), and for `cas` the
/// condition: `''` (the key must not exist) or the SHA-1 (hex) its current value must have.
/// Returns `{"ok", result}`, `{"unknown"}`, `{"importing"}`, `{"lost"}`, `{"moved", epoch, to}`,
/// `{"stale", epoch}`, `{"fenced"}` or `{"conflict", SHA-1 of the current value or ''}`.
pub static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DIGEST_LUA}{}",
        r#"
local m = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'movedTo', 'tracking', 'keys', 'digest')
if not m[1] then return {'unknown'} end
if m[1] == 'importing' then return {'importing'} end
if m[1] == 'lost' then return {'lost'} end
if m[1] == 'moved' then return {'moved', m[2] or '0', m[3] or ''} end
local req = tonumber(ARGV[1])
if req >= 0 and req ~= tonumber(m[2]) then return {'stale', m[2] or '0'} end
if m[1] == 'fenced' then return {'fenced'} end
local old = redis.call('GET', KEYS[2])
local result, new
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[2], ARGV[3])
  result, new = 'OK', ARGV[3]
elseif ARGV[2] == 'del' then
  result = tostring(redis.call('DEL', KEYS[2]))
elseif ARGV[2] == 'incr' then
  result = tostring(redis.call('INCRBY', KEYS[2], ARGV[3]))
  new = result
elseif ARGV[2] == 'cas' then
  local current = old and redis.sha1hex(old) or ''
  if current ~= ARGV[5] then return {'conflict', current} end
  redis.call('SET', KEYS[2], ARGV[3])
  result, new = 'OK', ARGV[3]
else
  return redis.error_reply('unknown op ' .. ARGV[2])
end
local n, d = account(tonumber(m[5] or '0'), m[6] or ZERO, ARGV[4], old, new)
redis.call('HSET', KEYS[1], 'keys', n, 'digest', d)
if m[4] == '1' then redis.call('SADD', KEYS[3], ARGV[4]) end
return {'ok', result}
"#
    ))
});

/// Imports a page of items and counters into a tenant being imported, keeping its key count
/// and digest current. Atomic with the state check: nothing lands once the tenant is active.
///
/// KEYS: meta, then one data key per entry. ARGV: per entry, the key suffix and `s` + value
/// (set) or `d` (delete).
/// Returns `{"ok", keys}` or `{"state", current state or ''}`.
pub static IMPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DIGEST_LUA}{}",
        r#"
local m = redis.call('HMGET', KEYS[1], 'state', 'keys', 'digest')
if m[1] ~= 'importing' then return {'state', m[1] or ''} end
local n, d = tonumber(m[2] or '0'), m[3] or ZERO
for i = 2, #KEYS do
  local suffix, op = ARGV[2 * i - 3], ARGV[2 * i - 2]
  local old = redis.call('GET', KEYS[i])
  local new
  if op:sub(1, 1) == 's' then
    new = op:sub(2)
    redis.call('SET', KEYS[i], new)
  else
    redis.call('DEL', KEYS[i])
  end
  n, d = account(n, d, suffix, old, new)
end
redis.call('HSET', KEYS[1], 'keys', n, 'digest', d)
return {'ok', tostring(n)}
"#
    ))
});

/// Sets a tenant's record; refuses to lower its epoch.
///
/// KEYS: meta. ARGV: state, epoch, movedTo ('' for none), tracking ('1', '0' or '' to keep),
/// require ('' or a state the tenant must currently be in), marker ('' to keep).
/// Returns `{"ok"}`, `{"lower", current}` or `{"state", current state}`.
pub static SET_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if ARGV[5] ~= '' and m[1] ~= ARGV[5] then return {'state', m[1] or ''} end
local current = tonumber(m[2] or '0')
local epoch = tonumber(ARGV[2])
if m[2] and epoch < current then return {'lower', tostring(current)} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'epoch', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'movedTo', ARGV[3]) else redis.call('HDEL', KEYS[1], 'movedTo') end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'tracking', ARGV[4]) end
if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'marker', ARGV[6]) end
return {'ok'}
"#,
    )
});

/// Creates new tenants' records where a tenant has none (no state in its meta hash).
///
/// KEYS: the tenants' meta hashes. ARGV: epoch, marker per tenant (2 each). Returns 5 fields per
/// tenant, in order: all empty when its record was created; else its state, epoch, movedTo,
/// tracking and marker ('' for an absent field), the record left as it was.
pub static CREATE_TENANTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 1, #KEYS do
  local m = redis.call('HMGET', KEYS[i], 'state', 'epoch', 'movedTo', 'tracking', 'marker')
  if m[1] then
    for f = 1, 5 do out[#out + 1] = m[f] or '' end
  else
    redis.call('HSET', KEYS[i], 'state', 'active', 'epoch', ARGV[2 * i - 1], 'marker', ARGV[2 * i])
    for f = 1, 5 do out[#out + 1] = '' end
  end
end
return out
"#,
    )
});

/// Takes the change set: the keys recorded since `mark` (or the last take) become the taken set,
/// and writes from now on are recorded in a fresh one, atomically, so a move can copy them
/// before fencing without missing a write that lands meanwhile.
///
/// KEYS: change set, taken set. Returns the number of keys taken.
pub static TAKE_CHANGES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return redis.call('SCARD', KEYS[2])
end
redis.call('DEL', KEYS[2])
return 0
"#,
    )
});

/// Sets the datastore's confirmation if the token of the confirmation under way is still there
/// (the datastore was not emptied, nor another confirmation started, since the records were
/// checked), and clears the token.
///
/// KEYS: confirming, confirmed. ARGV: token, the time to store. Returns 1 when confirmed.
pub static CONFIRM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// The authoritative rate-limit checks of a batch of requests (one round trip for all the
/// requests checked at about the same moment: [`crate::limit_batch`]), each against every limit
/// that matches it, in order, so a batch decides exactly as the same checks one by one would:
/// all are evaluated first, and tokens are taken only when all allow (so a request refused by one
/// limit costs nothing in the others). Time comes from the Redis server, so every replica of
/// the cell agrees on it.
///
/// KEYS: each request's state keys, one per limit, request after request. ARGV: the number of
/// requests, then for each: its number of limits, then for each limit 4 values: algorithm (`tb`
/// GCRA token bucket, `sw` sliding window of 10 sub-windows), requests, period in ms, burst.
/// Returns 5 values per request: `allowed (0|1), index of the deciding limit, remaining,
/// reset ms, retry-after ms`.
pub static RATE_LIMIT: LazyLock<Script> = LazyLock::new(|| Script::new(RATE_LIMIT_SOURCE));

/// Source of [`RATE_LIMIT`], for loading it elsewhere (the benchmark runs it in redis-benchmark).
pub const RATE_LIMIT_SOURCE: &str = r#"
local t = redis.call('TIME')
-- In milliseconds to the microsecond: a bucket of more than one request per millisecond must
-- not see time advance in whole milliseconds.
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
-- One request: its `limits` keys from KEYS[k] on, their values from ARGV[a] on.
local function check(k, a, limits)
  local writes = {}
  local tightest, tight_remaining, tight_reset = 1, math.huge, 0
  for i = 1, limits do
    local key = KEYS[k + i - 1]
    local base = a + (i - 1) * 4
    local alg = ARGV[base]
    local requests = tonumber(ARGV[base + 1])
    local period = tonumber(ARGV[base + 2])
    local burst = tonumber(ARGV[base + 3])
    if alg == 'tb' then
      -- GCRA: the state is the theoretical arrival time (TAT) of the next request.
      local emission = period / requests
      local tolerance = emission * burst
      local tat = tonumber(redis.call('GET', key) or '0')
      if tat < now then tat = now end
      local new_tat = tat + emission
      local allow_at = new_tat - tolerance
      if now < allow_at then
        return {0, i - 1, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
      end
      local remaining = math.floor((tolerance - (new_tat - now)) / emission)
      if remaining < tight_remaining then tightest, tight_remaining, tight_reset = i, remaining, math.ceil(new_tat - now) end
      writes[#writes + 1] = {'tb', key, new_tat, math.ceil(tolerance + emission)}
    else
      -- Sliding window over 10 sub-windows kept in a hash (field = sub-window index): the count
      -- of the last 10 sub-windows, current included, must stay below the limit. Memory is 10
      -- fields per tenant and limit whatever the rate; the window is exact to a tenth of a period.
      local slot = period / 10
      local cur = math.floor(now / slot)
      local counts = redis.call('HGETALL', key)
      local sum, oldest, stale = 0, nil, {}
      for j = 1, #counts, 2 do
        local idx, n = tonumber(counts[j]), tonumber(counts[j + 1])
        if idx > cur - 10 then
          sum = sum + n
          if n > 0 and (oldest == nil or idx < oldest) then oldest = idx end
        else
          stale[#stale + 1] = counts[j]
        end
      end
      local reset = math.ceil((cur + 1) * slot - now) + 9 * slot
      if sum + 1 > requests then
        -- Room appears when the oldest counted sub-window leaves the window.
        local wait = (oldest or cur) * slot + period - now
        return {0, i - 1, 0, math.ceil(reset), math.max(1, math.ceil(wait))}
      end
      local remaining = requests - sum - 1
      if remaining < tight_remaining then tightest, tight_remaining, tight_reset = i, remaining, math.ceil(reset) end
      writes[#writes + 1] = {'sw', key, cur, stale, math.ceil(period * 2)}
    end
  end
  for _, w in ipairs(writes) do
    if w[1] == 'tb' then
      redis.call('SET', w[2], w[3], 'PX', w[4])
    else
      redis.call('HINCRBY', w[2], w[3], 1)
      if #w[4] > 0 then redis.call('HDEL', w[2], unpack(w[4])) end
      redis.call('PEXPIRE', w[2], w[5])
    end
  end
  if tight_remaining == math.huge then tight_remaining = 0 end
  return {1, tightest - 1, tight_remaining, tight_reset, 0}
end
local out, k, a = {}, 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local r = check(k, a + 1, n)
  for j = 1, 5 do out[#out + 1] = r[j] end
  k, a = k + n, a + 1 + 4 * n
end
return out
"#;
