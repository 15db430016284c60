// Package filter implements the relay's server-side event filters: a set of
// logical sources and a key partition (MOD or RANGE, as in Databus).
//
// Partition syntax (the relay's "partition" query parameter and the CLI's
// --partition flag):
//
//	mod:3/8        bucket 3 of 8
//	mod:0,1,5/8    buckets 0, 1 and 5 of 8
//	range:0-1000   keys k with 0 <= k < 1000
//	range:0-1000,5000-6000
//
// A MOD bucket of a key is |k| mod n for a single integer key and the CRC-32C
// of the encoded key mod n otherwise (see event.KeyBucket), so any n
// consumers with buckets 0..n-1 together see every event exactly once.
// RANGE partitions need a single integer key; the relay refuses a RANGE
// filter over a source whose key is not one. Filters only ever drop data
// events: end-of-window and schema-change frames always pass, so every
// consumer's position advances through every window.
package filter

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/databus-go/databus/event"
)

// MaxBuckets bounds n in mod:b/n.
const MaxBuckets = 1 << 16

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("databus: bad partition")

// Kind is the kind of partition.
type Kind uint8

// Partition kinds.
const (
	None Kind = iota
	Mod
	Range
)

// Partition selects a subset of keys. The zero value selects every key.
type Partition struct {
	Kind    Kind
	N       uint32     // MOD: number of buckets
	Buckets []bool     // MOD: Buckets[b] is true when bucket b is selected; len N
	Ranges  []KeyRange // RANGE: sorted, non-overlapping
}

// KeyRange is the half-open interval [Lo, Hi).
type KeyRange struct{ Lo, Hi int64 }

// ParsePartition parses the partition syntax above; "" is the zero Partition.
func ParsePartition(s string) (Partition, error) {
	if s == "" {
		return Partition{}, nil
	}
	kind, spec, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return Partition{}, fmt.Errorf("%w %q: want mod:<buckets>/<n> or range:<lo>-<hi>[,...]", ErrSyntax, s)
	case kind == "mod":
		return parseMod(s, spec)
	case kind == "range":
		return parseRange(s, spec)
	}
	return Partition{}, fmt.Errorf("%w %q: unknown kind %q, want mod or range", ErrSyntax, s, kind)
}

func parseMod(s, spec string) (Partition, error) {
	list, nstr, ok := strings.Cut(spec, "/")
	if !ok {
		return Partition{}, fmt.Errorf("%w %q: want mod:<buckets>/<n>", ErrSyntax, s)
	}
	n, err := strconv.ParseUint(nstr, 10, 32)
	if err != nil || n == 0 || n > MaxBuckets {
		return Partition{}, fmt.Errorf("%w %q: bucket count %q must be an integer in [1, %d]", ErrSyntax, s, nstr, MaxBuckets)
	}
	p := Partition{Kind: Mod, N: uint32(n), Buckets: make([]bool, n)}
	for _, b := range strings.Split(list, ",") {
		v, err := strconv.ParseUint(b, 10, 32)
		if err != nil || v >= n {
			return Partition{}, fmt.Errorf("%w %q: bucket %q must be an integer in [0, %d)", ErrSyntax, s, b, n)
		}
		p.Buckets[v] = true
	}
	return p, nil
}

func parseRange(s, spec string) (Partition, error) {
	p := Partition{Kind: Range}
	for _, r := range strings.Split(spec, ",") {
		// Split at the dash that follows the first character, so that a
		// negative lower bound ("-5-10") parses.
		i := strings.Index(r[min(1, len(r)):], "-")
		if i < 0 {
			return Partition{}, fmt.Errorf("%w %q: range %q must be <lo>-<hi>", ErrSyntax, s, r)
		}
		i += min(1, len(r))
		lo, err1 := strconv.ParseInt(r[:i], 10, 64)
		hi, err2 := strconv.ParseInt(r[i+1:], 10, 64)
		if err1 != nil || err2 != nil {
			return Partition{}, fmt.Errorf("%w %q: range %q must be two integers <lo>-<hi>", ErrSyntax, s, r)
		}
		if lo >= hi {
			return Partition{}, fmt.Errorf("%w %q: range %q is empty (lo must be < hi)", ErrSyntax, s, r)
		}
		p.Ranges = append(p.Ranges, KeyRange{lo, hi})
	}
	sort.Slice(p.Ranges, func(i, j int) bool { return p.Ranges[i].Lo < p.Ranges[j].Lo })
	for i := 1; i < len(p.Ranges); i++ {
		if p.Ranges[i].Lo < p.Ranges[i-1].Hi {
			return Partition{}, fmt.Errorf("%w %q: ranges overlap", ErrSyntax, s)
		}
	}
	return p, nil
}

// String returns the syntax ParsePartition accepts.
func (p Partition) String() string {
	var b strings.Builder
	switch p.Kind {
	case Mod:
		b.WriteString("mod:")
		first := true
		for i, on := range p.Buckets {
			if on {
				if !first {
					b.WriteByte(',')
				}
				first = false
				b.WriteString(strconv.Itoa(i))
			}
		}
		fmt.Fprintf(&b, "/%d", p.N)
	case Range:
		b.WriteString("range:")
		for i, r := range p.Ranges {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%d-%d", r.Lo, r.Hi)
		}
	}
	return b.String()
}

// MatchKey reports whether an encoded key (see package event) is in p.
// A RANGE partition never matches a key that is not a single integer.
func (p *Partition) MatchKey(key []byte) bool {
	switch p.Kind {
	case Mod:
		return p.Buckets[event.KeyBucket(key, p.N)]
	case Range:
		k, ok := event.KeyInt(key)
		if !ok {
			return false
		}
		i := sort.Search(len(p.Ranges), func(i int) bool { return p.Ranges[i].Hi > k })
		return i < len(p.Ranges) && p.Ranges[i].Lo <= k
	}
	return true
}

// Filter is a source set and a partition. The zero value passes everything.
// A Filter is read-only after construction and safe for concurrent use.
type Filter struct {
	// Sources is the set of logical source ids to keep; nil keeps all.
	Sources   map[uint32]struct{}
	Partition Partition
}

// All reports whether f passes every frame, so a caller can skip per-frame work.
func (f *Filter) All() bool { return f.Sources == nil && f.Partition.Kind == None }

// Match reports whether a frame with header h passes f. Frames other than
// data events always pass.
func (f *Filter) Match(h event.Header) bool {
	if h.Kind != event.KindData {
		return true
	}
	if f.Sources != nil {
		if _, ok := f.Sources[h.Source]; !ok {
			return false
		}
	}
	return f.Partition.MatchKey(h.Key)
}
