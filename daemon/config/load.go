package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"

	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

// DropInDir is the name of the drop-in directory, beside the main file.
const DropInDir = "config.d"

// ErrUnusable marks an error that only a change of the config (or of a
// file it names) can fix: `dpsd run` exits with ExitConfig on it, and the
// unit does not restart it in a loop.
var ErrUnusable = errors.New("unusable config")

// Error is one problem found in a config file. Load returns one *Error, or
// several joined with errors.Join (one per line when printed).
type Error struct {
	File string // the file as named to Load, or a drop-in beside it
	Line int    // 1-based; 0 when the problem has no single line
	Key  string // dotted key path, e.g. "tpm.ownership"; empty for syntax errors without one
	Msg  string
}

// Error formats as "file:line: key: message", leaving out what is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// maxFileSize bounds each config file and drop-in: the reference config,
// every key with its comment, is under 8 KiB. A larger file is refused
// before it is read.
const maxFileSize = 1 << 20

// source is one config file as read from disk.
type source struct {
	name string
	data []byte
}

// Load reads the main file at path and every path/../config.d/*.toml drop-in
// (in name order; names starting with "." are editor or package-manager
// leftovers and skipped), applies them over Default() key by key, and
// validates the result. The main file may be missing when drop-ins exist.
// Errors name file, line and key (see Error).
func Load(path string) (*Config, error) {
	return load(path, true)
}

// LoadUnscoped is Load for what never talks to DPS (enroll-info reads the
// TPM; a client looks for the socket): a config without an ID scope is
// complete for them, so that a factory line can read the EK of a device
// whose ID scope is set later.
func LoadUnscoped(path string) (*Config, error) {
	return load(path, false)
}

func load(path string, scoped bool) (*Config, error) {
	sources, err := readSources(path)
	if err != nil {
		return nil, err
	}
	return build(path, sources, scoped)
}

// readSources reads the main file (if present) and the drop-ins.
func readSources(path string) ([]source, error) {
	if err := refuseOpenDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	var sources []source
	data, err := readFile(path)
	mainMissing := errors.Is(err, fs.ErrNotExist)
	switch {
	case err == nil:
		sources = append(sources, source{name: path, data: data})
	case !mainMissing:
		return nil, fmt.Errorf("reading config: %w", err)
	}

	dir := filepath.Join(filepath.Dir(path), DropInDir)
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading config drop-ins: %w", err)
	}
	if err == nil {
		if err := refuseWorldWritable(dir); err != nil {
			return nil, err
		}
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".toml") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name := filepath.Join(dir, e.Name())
		data, err := readFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading config drop-in: %w", err)
		}
		sources = append(sources, source{name: name, data: data})
	}

	if mainMissing && len(sources) == 0 {
		return nil, fmt.Errorf("reading config: %s does not exist and %s has no *.toml drop-in: "+
			"reinstall the dpsd package or pass --config: %w", path, dir, fs.ErrNotExist)
	}
	return sources, nil
}

// readFile reads a config file, refusing one that every user may write:
// whoever can change the config decides what dpsd (maybe root) does
// with the TPM and whom it gives tokens.
func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := refuseUntrusted(name, fi); err != nil {
		return nil, err
	}
	return filelimit.ReadOpen(f, maxFileSize)
}

// refuseWorldWritable refuses a drop-in directory every user may add
// files to (the sticky bit does not help: a new file needs no one's
// permission), or one another user owns.
func refuseWorldWritable(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("reading config drop-ins: %w", err)
	}
	return refuseUntrusted(dir, fi)
}

// refuseOpenDir refuses a config directory in which every user may
// replace files (world-writable without the sticky bit), or create the
// drop-in directory.
func refuseOpenDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // reported as the missing config
	case err != nil:
		return fmt.Errorf("reading config: %w", err)
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return worldWritable(dir, fi.Mode())
	}
	return nil
}

// refuseUntrusted refuses a config file or directory that every user may
// write or that belongs to another user than root or dpsd's own: its
// owner could change what dpsd does.
func refuseUntrusted(name string, fi fs.FileInfo) error {
	if fi.Mode().Perm()&0o002 != 0 {
		return worldWritable(name, fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return &Error{File: name, Msg: fmt.Sprintf("belongs to uid %d, who could change what dpsd does: chown root %s", st.Uid, name)}
	}
	return nil
}

func worldWritable(name string, mode fs.FileMode) error {
	return &Error{File: name, Msg: fmt.Sprintf("may be written by every user (mode %04o), so anyone could change what dpsd does: chmod o-w %s", mode.Perm(), name)}
}

// origin is where a key was last set, kept for errors found after merging.
type origin struct {
	src *source
	key toml.Key
}

// build applies the sources over the defaults and validates the merged
// result. mainPath names the file for errors that belong to no key.
func build(mainPath string, sources []source, scoped bool) (*Config, error) {
	c := Default()
	origins := make(map[string]origin)
	var errs []error
	for i := range sources {
		src := &sources[i]
		c.Files = append(c.Files, src.name)
		errs = append(errs, apply(c, src, origins)...)
	}
	if len(errs) == 0 {
		errs = checkMerged(c, mainPath, origins, scoped)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// maxErrorsPerFile bounds the report: past a few, the file is likely not
// a dpsd config at all, and each error costs a decode (see locate).
const maxErrorsPerFile = 10

// apply decodes one file and sets each key it holds, in file order.
func apply(c *Config, src *source, origins map[string]origin) []error {
	var tree map[string]any
	md, err := toml.Decode(string(src.data), &tree)
	if err != nil {
		return []error{syntaxError(src.name, err)}
	}
	var errs []error
	// Keys under a key already handled (a leaf, or an unknown table) are
	// not looked at again: one error per mistake.
	var handled []toml.Key
	for _, key := range md.Keys() {
		if len(errs) == maxErrorsPerFile {
			return append(errs, &Error{File: src.name, Msg: "too many errors; fix these first"})
		}
		if underAny(key, handled) {
			continue
		}
		if len(key) == 1 {
			if _, ok := tables[key[0]]; ok {
				if t := md.Type(key...); t != "Hash" {
					errs = append(errs, src.errorAt(key, "expected a table, got "+tomlTypeName(t)))
					handled = append(handled, key)
				}
				continue
			}
		}
		handled = append(handled, key)
		spec, ok := specs[key.String()]
		if !ok {
			errs = append(errs, src.errorAt(key, unknownKeyMsg(key, md.Type(key...))))
			continue
		}
		if err := spec.set(c, lookup(tree, key)); err != nil {
			errs = append(errs, src.errorAt(key, err.Error()))
			continue
		}
		origins[key.String()] = origin{src: src, key: key}
	}
	return errs
}

// underAny says whether key lies strictly below one of the given keys.
func underAny(key toml.Key, parents []toml.Key) bool {
	for _, p := range parents {
		if len(key) > len(p) && slices.Equal(key[:len(p)], p) {
			return true
		}
	}
	return false
}

// lookup returns the decoded value at key.
func lookup(tree map[string]any, key toml.Key) any {
	var v any = tree
	for _, k := range key {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// syntaxError turns the TOML parser's error into an *Error.
func syntaxError(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: name, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	return &Error{File: name, Msg: err.Error()}
}

// errorAt builds an *Error for key in this file.
func (s *source) errorAt(key toml.Key, msg string) *Error {
	return &Error{File: s.name, Line: locate(s.data, key), Key: key.String(), Msg: msg}
}

// errLocated is what locator fails with; only its position matters. The
// library keeps the error's text, not the error, hence a distinctive text.
var errLocated = errors.New("dpsd config: key located")

// locator is a decoding target that fails wherever it is put.
type locator struct{}

// UnmarshalTOML fails, so that the decoder reports the key's position.
func (locator) UnmarshalTOML(any) error { return errLocated }

// locate returns the line of key in data, or 0 if it cannot tell.
//
// The TOML library records every key's position but exposes it only in the
// errors it raises while decoding that key. So data is decoded a second time
// into a struct built to hold nothing but key, whose leaf always fails: the
// resulting ParseError carries the line. This runs only on the error path.
// (For a value spanning several lines the library gives its last line.)
func locate(data []byte, key toml.Key) int {
	t := reflect.TypeFor[locator]()
	for i := len(key) - 1; i >= 0; i-- {
		// The library's struct tags cannot name these keys.
		if key[i] == "" || key[i] == "-" || strings.Contains(key[i], ",") {
			return 0
		}
		t = reflect.StructOf([]reflect.StructField{{
			Name: "K",
			Type: t,
			Tag:  reflect.StructTag("toml:" + strconv.Quote(key[i])),
		}})
	}
	_, err := toml.Decode(string(data), reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) && pe.Message == errLocated.Error() {
		return pe.Position.Line
	}
	return 0
}

// tomlTypeName turns the library's type names into TOML's own words.
func tomlTypeName(t string) string {
	switch t {
	case "Hash":
		return "a table"
	case "ArrayHash":
		return "an array of tables"
	case "Array":
		return "an array"
	case "String":
		return "a string"
	case "Integer":
		return "an integer"
	case "Float":
		return "a float"
	case "Bool":
		return "a boolean"
	case "Datetime", "DatetimeLocal", "DateLocal", "TimeLocal":
		return "a date/time"
	}
	return t
}

// unknownKeyMsg says a key is unknown and suggests the closest known one.
func unknownKeyMsg(key toml.Key, typ string) string {
	what := "key"
	if typ == "Hash" || typ == "ArrayHash" {
		what = "table"
	}
	msg := "unknown " + what
	if s := suggest(key); s != "" {
		msg += " (did you mean " + s + "?)"
	}
	return msg
}

// suggest returns the known key or table nearest to key (a typo of at most
// two edits, case aside), or "".
func suggest(key toml.Key) string {
	var candidates []string
	switch len(key) {
	case 1:
		for t := range tables {
			candidates = append(candidates, t)
		}
	case 2:
		if _, ok := tables[key[0]]; !ok {
			return ""
		}
		for path := range specs {
			if strings.HasPrefix(path, key[0]+".") {
				candidates = append(candidates, path)
			}
		}
	default:
		return ""
	}
	best, bestDist := "", 3
	for _, cand := range candidates {
		d := editDistance(strings.ToLower(key.String()), cand)
		if d < bestDist || (d == bestDist && cand < best) {
			best, bestDist = cand, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
