//! The Lua scripts the Redis directory runs (each atomically, by `EVAL`) and how it
//! reads the server's epoch: which server it reached, and since when that server's
//! data may have been missing writes. `cluster::redis` runs them; `docs/PROTOCOL.md`
//! says what each guarantees.

/// The replication id Redis reports before any: all zeros (`master_replid2` of a
/// server that was never promoted).
const NO_REPLID: &str = "0000000000000000000000000000000000000000";

/// Shared by the scripts that write: the current time by Redis's clock, and the
/// epoch check. `epoch(replid, ago_ms, lease_ms, now)` returns until when the epoch's
/// grace lasts, starting a new epoch when the server is not the one last seen.
pub(super) const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch(key, replid, ago, lease, now)
  local e = redis.call('GET', key)
  if e then
    local id, g = string.match(e, '^(%S+) (%d+)$')
    if id == replid then return tonumber(g) end
  end
  local g = now - ago + lease
  redis.call('SET', key, replid .. ' ' .. g)
  return g
end
"#;

/// Takes the key unless another owner holds it, or nobody does during an epoch's
/// grace. KEYS: claim, epoch. ARGV: holder JSON, owner, lease ms, channel, key name,
/// replid, ms since the server's start (0: grace from now). Returns `{'granted'}`,
/// `{'taken', holder}` or `{'recovering', ms left}`.
pub(super) const CLAIM: &str = r#"
local now = now_ms()
local lease = tonumber(ARGV[3])
local grace = epoch(KEYS[2], ARGV[6], tonumber(ARGV[7]), lease, now)
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, h = pcall(cjson.decode, cur)
  if (not ok) or type(h) ~= 'table' or h.owner ~= ARGV[2] then return {'taken', cur} end
elseif now < grace then
  return {'recovering', tostring(grace - now)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
redis.call('PUBLISH', ARGV[4], cjson.encode({op = 'claimed', key = ARGV[5], holder = ARGV[1]}))
return {'granted'}
"#;

/// A node's renewal in one step. KEYS: epoch, node, then the claims. ARGV: lease ms,
/// node JSON, replid, ms since the server's start, channel, then per claim its holder
/// JSON and key name. Returns per claim 1 (renewed), 2 (written back) or the holder
/// that has it now.
pub(super) const RENEW_ALL: &str = r#"
local now = now_ms()
local lease = tonumber(ARGV[1])
epoch(KEYS[1], ARGV[3], tonumber(ARGV[4]), lease, now)
redis.call('SET', KEYS[2], ARGV[2], 'PX', lease)
local out = {}
for i = 3, #KEYS do
  local h = ARGV[6 + 2 * (i - 3)]
  local name = ARGV[7 + 2 * (i - 3)]
  local cur = redis.call('GET', KEYS[i])
  if cur == h then
    redis.call('PEXPIRE', KEYS[i], lease)
    out[#out + 1] = 1
  elseif not cur then
    redis.call('SET', KEYS[i], h, 'PX', lease)
    redis.call('PUBLISH', ARGV[5], cjson.encode({op = 'claimed', key = name, holder = h}))
    out[#out + 1] = 2
  else
    out[#out + 1] = cur
  end
end
return out
"#;

/// Deletes a key held by exactly this holder. ARGV: holder JSON, channel, key name.
/// Returns 1 when deleted, else 0.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], cjson.encode({op = 'released', key = ARGV[3]}))
  return 1
end
return 0
"#;

/// Moves a client's proof record from ARGV[1] ('' = none) to ARGV[2] with a TTL of
/// ARGV[3] ms. Returns 1 when moved, 0 when the record was something else.
pub(super) const ADVANCE_PROOF: &str = r#"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// The server's replication id, and how long ago its epoch may have started in ms:
/// its uptime, or 0 when it was promoted from a replica (writes may be missing since
/// any moment up to now).
pub(super) fn epoch_args(replication: &str, server: &str) -> (String, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let replid = field(replication, "master_replid").unwrap_or_else(|| NO_REPLID.into());
    let promoted = field(replication, "master_replid2").is_some_and(|r| r != NO_REPLID);
    let uptime_s: u64 = field(server, "uptime_in_seconds")
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    let ago = if promoted { 0 } else { uptime_s * 1000 };
    (replid, ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_starts_at_the_server_s_start_or_at_a_promotion() {
        let info = |r2: &str| {
            format!(
                "# Replication\r\nrole:master\r\nmaster_replid:abc123\r\nmaster_replid2:{r2}\r\n"
            )
        };
        let server = "# Server\r\nuptime_in_seconds:42\r\n";
        assert_eq!(
            epoch_args(&info(NO_REPLID), server),
            ("abc123".into(), 42_000)
        );
        assert_eq!(epoch_args(&info("def456"), server), ("abc123".into(), 0));
        // Unreadable: a fixed id and no time since start, so a grace from now.
        assert_eq!(epoch_args("", ""), (NO_REPLID.into(), 0));
    }
}
