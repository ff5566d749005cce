// Package cli is dpsd's command line: one binary, a verb per job. `run` is
// the daemon; the other verbs are clients of the status socket, except
// check-config and version, and enroll-info and check fall back to doing
// the work themselves when the daemon is not running.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
	"github.com/dpsd-project/dpsd/daemon/config"
)

// Exit codes (see "Command line" in docs/design.md).
const (
	// ExitOK: done; for status, the daemon answered; for wait, provisioned;
	// for check, nothing failed.
	ExitOK = 0
	// ExitFailure: the verb could not do its job, wait gave up, or a check
	// failed.
	ExitFailure = 1
	// ExitUsage: unknown verb or bad flags.
	ExitUsage = 2
	// ExitConfig: `dpsd run` cannot start with this config (EX_CONFIG of
	// sysexits.h); dpsd.service does not restart on it
	// (RestartPreventExitStatus=78): restarting cannot help.
	ExitConfig = 78
)

// DefaultConfigPath is where the daemon and every client look for the
// config unless --config says otherwise.
const DefaultConfigPath = "/etc/dpsd/config.toml"

// RunFunc is the daemon's entry point (daemon.Run). cmd/dpsd injects it so
// that this package does not import the daemon's wiring.
type RunFunc func(ctx context.Context, configPath string, log *slog.Logger) error

// Standalone answers enroll-info and check in this process when the
// daemon is not running (daemon/standalone.Local). cmd/dpsd injects it so
// that the command line stays a client of the daemon and imports no TPM
// code. Warnings go to stderr; stdout stays the verb's answer.
type Standalone interface {
	EnrollInfo(ctx context.Context, configPath string, stderr io.Writer) (apitype.EnrollInfo, error)
	// Check runs the checks and reports that nothing answers on socket.
	Check(ctx context.Context, configPath, socket string, stderr io.Writer) apitype.CheckReport
}

// App is the command line with the daemon it starts for `run`.
type App struct {
	// Run is called by `dpsd run`.
	Run RunFunc
	// Standalone is what enroll-info and check fall back to when the
	// daemon is not running; nil, they report that it is not.
	Standalone Standalone
}

// command is one verb.
type command struct {
	name string
	args string
	// summary is the one line of the overview; detail follows it in the
	// verb's --help.
	summary string
	detail  string
	// client verbs take --config and --socket.
	client bool
	// setup declares the verb's flags and returns what runs once they are
	// parsed.
	setup func(fs *flag.FlagSet, e *env) func(ctx context.Context) int
}

// env is what a verb works with.
type env struct {
	app            App
	stdout, stderr io.Writer
	configPath     string
	socket         string
	// now is the clock for human views; tests fix it.
	now func() time.Time
}

func commands() []command {
	return []command{
		runCommand(),
		statusCommand(),
		waitCommand(),
		reprovisionCommand(),
		tokenCommand(),
		enrollInfoCommand(),
		checkCommand(),
		checkConfigCommand(),
		versionCommand(),
	}
}

// Main runs one dpsd command line (args without the program name) and
// returns the process's exit code.
func (a App) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 {
		usage(stderr, cmds)
		return ExitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if name == "help" && len(args) > 1 {
			return a.Main(ctx, []string{args[1], "--help"}, stdout, stderr)
		}
		usage(stdout, cmds)
		return ExitOK
	}
	for _, c := range cmds {
		if c.name == name {
			return a.runCommand(ctx, c, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "dpsd: unknown command %q\n\n", name)
	usage(stderr, cmds)
	return ExitUsage
}

func (a App) runCommand(ctx context.Context, c command, args []string, stdout, stderr io.Writer) int {
	e := &env{app: a, stdout: stdout, stderr: stderr, now: time.Now}
	flags := flag.NewFlagSet("dpsd "+c.name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {}
	if c.client {
		flags.StringVar(&e.configPath, "config", DefaultConfigPath, "config `file`, read to find the socket")
		flags.StringVar(&e.socket, "socket", "", "status socket `path` (default: [status] socket of the config)")
	}
	run := c.setup(flags, e)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, c, flags)
			return ExitOK
		}
		fmt.Fprintf(stderr, "see: dpsd %s --help\n", c.name)
		return ExitUsage
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "dpsd %s: unexpected argument %q\nsee: dpsd %s --help\n", c.name, flags.Arg(0), c.name)
		return ExitUsage
	}
	return run(ctx)
}

func usage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "usage: dpsd <command> [flags]")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every command takes --help.")
}

func commandUsage(w io.Writer, c command, flags *flag.FlagSet) {
	fmt.Fprintf(w, "usage: dpsd %s %s\n\n%s\n", c.name, c.args, c.summary)
	if c.detail != "" {
		fmt.Fprintf(w, "%s\n", c.detail)
	}
	var defaults strings.Builder
	flags.SetOutput(&defaults)
	flags.PrintDefaults()
	if defaults.Len() > 0 {
		fmt.Fprintf(w, "\nflags:\n%s", defaults.String())
	}
}

// client returns a client of the socket: --socket if given, else the
// config's. A config that cannot be read does not stop a client verb (a
// technician still wants the status); it is mentioned and the default
// socket is used.
func (e *env) client() *client.Client {
	def := config.Default()
	if e.socket != "" {
		return client.New(e.socket, def.Status.Group)
	}
	cfg, err := config.LoadUnscoped(e.configPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(e.stderr, "dpsd: %v (using the default socket %s; see dpsd check-config)\n", err, def.Status.Socket)
		}
		return client.New(def.Status.Socket, def.Status.Group)
	}
	return client.New(cfg.Status.Socket, cfg.Status.Group)
}

// fail prints an error for verb and returns ExitFailure.
func (e *env) fail(verb string, err error) int {
	fmt.Fprintf(e.stderr, "dpsd %s: %v\n", verb, err)
	return ExitFailure
}

// newLogger is the daemon's logger: text on stderr, without timestamps
// under systemd (the journal has its own).
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
