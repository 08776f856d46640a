# Sourced by the per-request counting scripts (instructions_per_request.sh,
# syscalls_per_request.sh, cpu_split.sh): the sale each measured route targets.

# True for the bare-handler ceiling (flashsale-ceiling), which has no store and no admin API.
is_ceiling() { # BINARY
  ! "$1" --help 2>/dev/null | grep -q -- '--data-dir'
}

# Buys the sale's one unit (as BUYER, default "first"), so every later purchase is refused.
sell_one() { # BASE_URL SALE_ID [BUYER]
  curl -fs -X POST "$1/api/sales/$2/orders" -H 'content-type: application/json' \
    -d "{\"user_id\":\"${3:-first}\",\"quantity\":1}" >/dev/null
}

# Creates the sale ROUTE targets on a flashsale server and prints its id: active for an hour,
# with ample stock for `purchase` and one unit otherwise (`sell_one` makes it sold out).
route_sale() { # BASE_URL ADMIN_TOKEN ROUTE NAME
  local now stock sale
  now=$(date -u +%s)
  stock=1
  [ "$3" = purchase ] && stock=100000000
  sale=$(curl -fs -X POST "$1/api/admin/sales" -H "authorization: Bearer $2" \
    -H 'content-type: application/json' \
    -d "{\"name\":\"$4\",\"stock\":$stock,\"per_user_limit\":1,\"starts_at\":\"$(date -u -d @$((now - 1)) +%FT%TZ)\",\"ends_at\":\"$(date -u -d @$((now + 3600)) +%FT%TZ)\"}")
  sed -E 's/.*"sale_id":([0-9]+).*/\1/' <<<"$sale"
}

# Sets `url` (the path ROUTE requests on sale SALE_ID) and `lua` (wrk's options for its body:
# scripts/wrk/orders.lua, a distinct buyer per request, for the purchase routes).
route_request() { # ROUTE SALE_ID
  case $1 in
    status) url=/api/sales/$2; lua=() ;;
    purchase | sold-out) url=/api/sales/$2/orders; lua=(-s "$(dirname "${BASH_SOURCE[0]}")/../wrk/orders.lua") ;;
    *) echo "unknown route $1" >&2; exit 2 ;;
  esac
}
