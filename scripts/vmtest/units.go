package main

// dpsemu's settings in the guest: the ID scope, the hub it allocates to
// and its loopback addresses.
const (
	emuIDScope = "0ne00VMTEST"
	emuHub     = "vmtest-hub.azure-devices.example"
	emuDPS     = "127.0.0.1:8443"
	emuHubAddr = "127.0.0.1:8883"
	emuAdmin   = "127.0.0.1:8080"
)

// testUnits are the systemd units each run writes into the guest, beside
// what the package brings: dpsemu on loopback, a drop-in that starts dpsd
// after it (it stands in for the network being online), and the test
// driver, which runs after dpsd has started (or failed to), runs the boot's
// phase and powers off.
var testUnits = map[string]string{
	"/etc/systemd/system/vmtest-dpsemu.service": `[Unit]
Description=dpsemu: DPS and IoT Hub on loopback for the VM test
[Service]
ExecStart=/usr/local/bin/dpsemu --dir /var/lib/dpsemu --id-scope ` + emuIDScope + ` --hub ` + emuHub +
		` --dps-listen ` + emuDPS + ` --hub-listen ` + emuHubAddr + ` --admin-listen ` + emuAdmin + `
ExecStartPost=/usr/local/bin/vmtest await http://` + emuAdmin + `/stats
[Install]
WantedBy=multi-user.target
`,
	"/etc/systemd/system/dpsd.service.d/vmtest.conf": `# The test's DPS and hub listen on loopback in this VM: start dpsd after them.
[Unit]
After=vmtest-dpsemu.service
Wants=vmtest-dpsemu.service
`,
	"/etc/systemd/system/vmtest.service": `[Unit]
Description=dpsd VM test driver
After=vmtest-dpsemu.service dpsd.socket dpsd.service
Wants=vmtest-dpsemu.service
SuccessAction=poweroff
FailureAction=poweroff
[Service]
Type=exec
ExecStart=/usr/local/bin/vmtest guest
RuntimeMaxSec=15min
[Install]
WantedBy=multi-user.target
`,
}
