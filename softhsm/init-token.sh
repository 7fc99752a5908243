#!/usr/bin/env bash
# Creates (once) a SoftHSM token for clm under DATA_DIR/softhsm:
#   softhsm2.conf   configuration pointing at DATA_DIR/softhsm/tokens
#   user.pin        the user PIN (mode 0600), read by clm in development
#   so.pin          the security officer PIN (mode 0600)
# Idempotent: an existing token with the label is left alone, and so are
# its PIN files. PINs are never printed.
# Usage: softhsm/init-token.sh DATA_DIR [LABEL]
set -euo pipefail
umask 077

data_dir=${1:?usage: init-token.sh DATA_DIR [LABEL]}
label=${2:-clm}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$data_dir/softhsm/tokens"
dir=$(cd "$data_dir/softhsm" && pwd)
conf="$dir/softhsm2.conf"
# '|' cannot occur in the replacement because it is escaped.
tokendir=$(printf '%s' "$dir/tokens" | sed 's/[|&\\]/\\&/g')
sed "s|@TOKENDIR@|$tokendir|" "$here/softhsm2.conf.template" > "$conf.tmp"
mv "$conf.tmp" "$conf"
export SOFTHSM2_CONF="$conf"

# Exact label match (labels are padded with blanks in the slot listing).
labels() {
  softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//'
}

if labels | grep -Fxq -- "$label"; then
  echo "token '$label' already exists in $dir/tokens"
else
  if [ -s "$dir/user.pin" ] && labels | grep -q .; then
    # Another token of this directory owns user.pin: overwriting it would
    # lock clm out of that token.
    echo "init-token.sh: $dir already holds a token whose PIN is in user.pin;" \
         "use another DATA_DIR for label '$label'" >&2
    exit 1
  fi
  # Generated into files first: the PINs never reach stdout or the log.
  # (softhsm2-util only takes them as arguments.)
  if command -v openssl >/dev/null; then
    openssl rand -hex 16 | tr -d '\n' > "$dir/user.pin"
    openssl rand -hex 16 | tr -d '\n' > "$dir/so.pin"
  else
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$dir/user.pin"
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$dir/so.pin"
  fi
  chmod 600 "$dir/user.pin" "$dir/so.pin"
  softhsm2-util --init-token --free --label "$label" \
    --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
  echo "initialised token '$label' in $dir/tokens"
fi
echo "export SOFTHSM2_CONF=$conf"
echo "export CLM_PKCS11_PIN_FILE=$dir/user.pin"
