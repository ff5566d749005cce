package main

import (
	"fmt"
	"regexp"
	"time"
)

var (
	// describeTagged matches `git describe` on a tagged history: the tag
	// (a leading v dropped), then the commits since it and the abbreviated
	// hash when HEAD is past the tag.
	describeTagged = regexp.MustCompile(`^v?([0-9][0-9A-Za-z.+~]*)(?:-([0-9]+)-g([0-9a-f]+))?$`)
	// describeUntagged matches `git describe --always` without any tag: the
	// abbreviated hash alone.
	describeUntagged = regexp.MustCompile(`^[0-9a-f]{7,40}$`)
)

// upstreamVersion turns the output of `git describe --tags --always --dirty`
// into a Debian upstream version that sorts the way the commits do, so that
// image builders can upgrade from one build to the next:
//
//	v1.2.0                -> 1.2.0
//	v1.2.0-3-g61bb585     -> 1.2.0+git3.61bb585        (after 1.2.0, before 1.2.1)
//	61bb585               -> 0~git20261126174725.61bb585 (before any tag; ordered by commit time)
//	...-dirty             -> ...+dirty
func upstreamVersion(describe string, committed time.Time) (string, error) {
	base, dirty := describe, false
	if len(base) > len("-dirty") && base[len(base)-len("-dirty"):] == "-dirty" {
		base, dirty = base[:len(base)-len("-dirty")], true
	}
	var v string
	switch {
	case describeUntagged.MatchString(base):
		v = fmt.Sprintf("0~git%s.%s", committed.UTC().Format("20060102150405"), base)
	case describeTagged.MatchString(base):
		m := describeTagged.FindStringSubmatch(base)
		v = m[1]
		if m[2] != "" {
			v += fmt.Sprintf("+git%s.%s", m[2], m[3])
		}
	default:
		return "", fmt.Errorf("version %q: want a tag starting with a digit (v1.2.0) or a commit hash, as git describe prints them", describe)
	}
	if dirty {
		v += "+dirty"
	}
	return v, nil
}
