#!/usr/bin/env bash
# Creates (once) a SoftHSM token for clm under DATA_DIR/softhsm:
#   softhsm2.conf   configuration pointing at DATA_DIR/softhsm/tokens
#   user.pin        the user PIN (mode 0600), read by clm in development
#   so.pin          the security officer PIN (mode 0600)
# Idempotent: an existing token with the label is left alone.
# Usage: softhsm/init-token.sh DATA_DIR [LABEL]
set -euo pipefail
umask 077

data_dir=${1:?usage: init-token.sh DATA_DIR [LABEL]}
label=${2:-clm}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$data_dir/softhsm/tokens"
dir=$(cd "$data_dir/softhsm" && pwd)
conf="$dir/softhsm2.conf"
sed "s#@TOKENDIR@#$dir/tokens#" "$here/softhsm2.conf.template" > "$conf"
export SOFTHSM2_CONF="$conf"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]+$label[[:space:]]*$"; then
  echo "token '$label' already exists in $dir/tokens"
else
  # PINs are generated, written with mode 0600 and never printed.
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$dir/user.pin"
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$dir/so.pin"
  softhsm2-util --init-token --free --label "$label" \
    --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
  echo "initialised token '$label' in $dir/tokens"
fi
echo "export SOFTHSM2_CONF=$conf"
echo "export CLM_PKCS11_PIN_FILE=$dir/user.pin"
