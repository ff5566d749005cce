package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// systemdStubs stand in for a running systemd in the chroot: they record
// what the maintainer scripts ask of it. dpsd.service counts as running when
// /tmp/dpsd-active exists.
var systemdStubs = map[string]string{
	"/usr/bin/systemctl": `#!/bin/sh
echo "systemctl $*" >>/tmp/systemd-calls
case "$*" in *is-active*) [ -e /tmp/dpsd-active ] ;; esac
`,
	"/usr/bin/deb-systemd-invoke": `#!/bin/sh
echo "deb-systemd-invoke $*" >>/tmp/systemd-calls
`,
}

// checkLiveStart installs the package on what looks like a running systemd:
// a device without an ID scope gets the units enabled but not started (a
// started daemon would exit 78 and leave a failed unit) and one next step;
// a configured one is started, and restarted on upgrade.
func checkLiveStart(t *testing.T, deb string) {
	b, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	const idScope = "[provisioning]\nid_scope = \"0ne00000001\"\n"
	for _, tc := range []struct {
		name    string
		preseed string // a drop-in written before the install, if any
		running bool   // dpsd.service is active before the second install
		upgrade bool   // install twice: the second is an upgrade
		// wantInvoke are the deb-systemd-invoke calls.
		wantInvoke []string
		// wantNote is what postinst prints, "" for nothing.
		wantNote []string
	}{
		{name: "fresh install without an ID scope",
			wantNote: []string{"dpsd is enabled but not started", "provisioning.id_scope: required", "Then: systemctl start dpsd"}},
		{name: "fresh install with a preseeded ID scope", preseed: idScope,
			wantInvoke: []string{"start dpsd.socket dpsd.service"}},
		{name: "upgrade of a configured device", preseed: idScope, running: true, upgrade: true,
			// Restarting the socket with the service running fails.
			wantInvoke: []string{"start dpsd.socket dpsd.service", "restart dpsd.service"}},
		{name: "upgrade of a device whose config was broken while it ran", running: true, upgrade: true,
			wantNote: []string{"dpsd is enabled but not started", "Then: systemctl restart dpsd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChroot(t)
			c.write(t, "/run/systemd/system/.keep", nil)
			for path, script := range systemdStubs {
				c.write(t, path, []byte(script))
				if err := os.Chmod(c.dir+path, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			c.write(t, "/tmp/dpsd.deb", b)
			if tc.preseed != "" {
				c.write(t, "/etc/dpsd/config.d/50-image.toml", []byte(tc.preseed))
			}
			if tc.upgrade {
				c.run(t, "dpkg -i /tmp/dpsd.deb >/dev/null")
				c.sh(t, ": >/tmp/systemd-calls")
			}
			if tc.running {
				c.write(t, "/tmp/dpsd-active", nil)
			}
			// What postinst prints, without dpkg's own progress lines.
			out := c.sh(t, "dpkg -i /tmp/dpsd.deb >/tmp/dpkg.out; "+
				"grep -v -e '^Selecting' -e '^(Reading' -e '^Preparing' -e '^Unpacking' -e '^Setting up' /tmp/dpkg.out || true")
			calls := c.read(t, "/tmp/systemd-calls")
			if !strings.Contains(calls, "systemctl --system daemon-reload") {
				t.Errorf("no daemon-reload; calls:\n%s", calls)
			}
			var invoke []string
			for line := range strings.Lines(calls) {
				if args, ok := strings.CutPrefix(line, "deb-systemd-invoke "); ok {
					invoke = append(invoke, strings.TrimSpace(args))
				}
			}
			if !slices.Equal(invoke, tc.wantInvoke) {
				t.Errorf("deb-systemd-invoke %q, want %q; calls:\n%s", invoke, tc.wantInvoke, calls)
			}
			if len(tc.wantNote) == 0 && strings.TrimSpace(out) != "" {
				t.Errorf("postinst printed:\n%s", out)
			}
			for _, want := range tc.wantNote {
				if !strings.Contains(out, want) {
					t.Errorf("postinst output lacks %q:\n%s", want, out)
				}
			}
			// With systemctl present, deb-systemd-helper enables a new unit
			// with systemctl preset rather than its own symlinks.
			for _, unit := range []string{"dpsd.service", "dpsd.socket"} {
				if !tc.upgrade && !strings.Contains(calls, "--preset-mode=enable-only preset "+unit+"\n") {
					t.Errorf("%s was not enabled; calls:\n%s", unit, calls)
				}
			}
		})
	}
}
