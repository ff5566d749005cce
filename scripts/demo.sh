#!/usr/bin/env bash
# make demo: a software TPM (swtpm), the local DPS + IoT Hub emulator
# (dpsemu) and dpsd in a temporary directory; the TPM's EK is enrolled as an
# operator would, dpsd provisions, and `dpsd status` shows the result.
# Exits 0 only when the device is provisioned. Everything is cleaned up.
# X509=1: the enrollment has a credential policy and dpsd authenticates to
# the hub with the certificate DPS issues for a key in the TPM.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin
work=$(mktemp -d /tmp/dpsd-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
json_field() { # json_field NAME < JSON: the string value of NAME
	tr -d '\n' | sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"
}

step "software TPM: swtpm in $work/tpm"
mkdir -p "$work/tpm"
swtpm socket --tpm2 --server "type=unixio,path=$work/tpm.sock" --ctrl "type=unixio,path=$work/tpm.sock.ctrl" \
	--tpmstate "dir=$work/tpm" --flags not-need-init,startup-clear >"$work/swtpm.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $work/tpm.sock ]] && break; sleep 0.1; done

step "cloud: dpsemu (DPS over HTTPS, IoT Hub over MQTT/TLS) on loopback"
mkfifo "$work/emu.out"
"$bin/dpsemu" --dir "$work/emu" --id-scope 0ne00DEMO0 --hub demo-hub.azure-devices.example \
	--dps-listen 127.0.0.1:0 --hub-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
	>"$work/emu.out" 2>"$work/emu.log" &
pids+=($!)
read -r addrs <"$work/emu.out"
dps=$(json_field dps <<<"$addrs") hub=$(json_field hub <<<"$addrs") admin=$(json_field admin <<<"$addrs")
echo "DPS https://$dps  hub $hub  admin http://$admin"

x509=${X509:-}
hubauth="" policy=""
if [[ $x509 == 1 ]]; then
	curl -fsS -X PUT "http://$admin/credentialPolicies/demo" -H 'Content-Type: application/json' \
		-d '{"certificateLifetime":"720h"}' >/dev/null
	hubauth='auth = "x509"' policy=',"credentialPolicyName":"demo"'
	echo "credential policy demo: certificates for 30 days"
fi

cat >"$work/config.toml" <<CONF
[provisioning]
global_endpoint = "https://$dps"
id_scope = "0ne00DEMO0"
$([[ $x509 == 1 ]] && echo 'api_version = "2026-11-01"')

[tpm]
device = "swtpm:$work/tpm.sock"

[hub]
endpoint_override = "$hub"
$hubauth

[network]
ca_file = "$work/emu/ca.pem"

[status]
socket = "$work/status.sock"
group = "root"

[state]
dir = "$work/state"
CONF

step "factory line: dpsd enroll-info, then an individual enrollment in DPS"
info=$("$bin/dpsd" enroll-info --json --config "$work/config.toml")
regid=$(json_field registrationId <<<"$info") ek=$(json_field endorsementKey <<<"$info")
echo "registration ID $regid"
curl -fsS -X PUT "http://$admin/enrollments/$regid" -H 'Content-Type: application/json' \
	-d "{\"registrationId\":\"$regid\",\"attestation\":{\"type\":\"tpm\",\"tpm\":{\"endorsementKey\":\"$ek\"}}$policy}" >/dev/null
echo "enrolled"

step "first boot: dpsd run"
"$bin/dpsd" run --config "$work/config.toml" >"$work/dpsd.log" 2>&1 &
pids+=($!)
start=$(date +%s%N)
if ! "$bin/dpsd" wait --timeout 60s --config "$work/config.toml"; then
	cat "$work/dpsd.log" >&2
	exit 1
fi
echo "provisioned in $(( ($(date +%s%N) - start) / 1000000 )) ms"
# The hub check follows provisioning; give it a moment to show in the status.
for _ in $(seq 50); do "$bin/dpsd" status --json --config "$work/config.toml" | grep -q '"result"' && break; sleep 0.1; done

step "dpsd status"
"$bin/dpsd" status --config "$work/config.toml"
