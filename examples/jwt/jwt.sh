#!/usr/bin/env bash
# A worked example of the router's verified tenant identity (`--tenant-from jwt`) with nothing
# but Debian's openssl and coreutils: an Ed25519 signing key, the JWKS the router reads, and
# tokens for tenants. docs/router.md ("Tenant identity") walks through it; router/tests/jwt.rs
# runs it against a real router.
#
# Usage: examples/jwt/jwt.sh key DIR                          make DIR/signing-key.pem (once)
#        examples/jwt/jwt.sh jwks DIR                         print the JWKS of that key
#        examples/jwt/jwt.sh token DIR TENANT AUDIENCE [TTL]  print a token for TENANT, valid
#                                                             TTL seconds (default 3600)
#
# In production the tokens come from your identity provider, and the JWKS is the one it
# publishes (its jwks_uri); this script only shows the shapes.
set -euo pipefail

b64url() { basenc --base64url -w0 | tr -d '='; }
die() { echo "jwt.sh: $*" >&2; exit 2; }

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 key|jwks|token DIR [TENANT AUDIENCE [TTL]] (see the header)"
key="$dir/signing-key.pem"
# The key id: the first 16 characters of the base64url SHA-256 of the public key.
kid() { openssl pkey -in "$key" -pubout -outform DER | openssl dgst -sha256 -binary | b64url | cut -c1-16; }

case "$cmd" in
  key)
    mkdir -p "$dir"
    [ -f "$key" ] || openssl genpkey -algorithm ED25519 -out "$key"
    echo "$key"
    ;;
  jwks)
    [ -f "$key" ] || die "no $key: run '$0 key $dir' first"
    # An Ed25519 public key's DER form ends with the 32 raw bytes the JWK's x carries.
    x="$(openssl pkey -in "$key" -pubout -outform DER | tail -c 32 | b64url)"
    printf '{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"%s","x":"%s"}]}\n' "$(kid)" "$x"
    ;;
  token)
    [ -f "$key" ] || die "no $key: run '$0 key $dir' first"
    tenant="${3:-}" audience="${4:-}" ttl="${5:-3600}"
    [ -n "$tenant" ] && [ -n "$audience" ] || die "usage: $0 token DIR TENANT AUDIENCE [TTL]"
    now="$(date +%s)"
    header="$(printf '{"alg":"EdDSA","typ":"JWT","kid":"%s"}' "$(kid)" | b64url)"
    payload="$(printf '{"tenant":"%s","aud":"%s","iat":%d,"exp":%d}' "$tenant" "$audience" "$now" "$((now + ttl))" | b64url)"
    input="$(mktemp)"
    trap 'rm -f "$input"' EXIT
    printf '%s.%s' "$header" "$payload" >"$input"
    signature="$(openssl pkeyutl -sign -inkey "$key" -rawin -in "$input" | b64url)"
    printf '%s.%s.%s\n' "$header" "$payload" "$signature"
    ;;
  *) die "unknown command '$cmd' (key, jwks or token)" ;;
esac
