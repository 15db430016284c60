// Package checkpoint defines a consumer's position in a databus stream and
// its JSON form.
//
// A checkpoint names the last window a consumer has fully processed; it is
// only ever taken at a window boundary, so resuming from it replays nothing
// that was committed and skips nothing that was not. The JSON form is what
// clients send to the relay (?checkpoint=...) and what checkpoint stores
// persist:
//
//	{"v":1,"mode":"online","scn":1234}
//	{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":900,"targetScn":1500,"source":"demo.person","after":"..."}}
//
// Parse is strict: unknown fields, unknown modes and inconsistent bootstrap
// fields are errors, because a checkpoint that is silently misread loses or
// repeats data.
package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the current checkpoint format version ("v").
const Version = 1

// Mode is the phase a consumer is in.
type Mode string

// Consumer modes.
const (
	// Online: consuming the relay's stream after SCN.
	Online Mode = "online"
	// BootstrapSnapshot: reading the bootstrap snapshot as of StartSCN.
	BootstrapSnapshot Mode = "bootstrap_snapshot"
	// BootstrapCatchup: reading the bootstrap log from SCN up to TargetSCN.
	BootstrapCatchup Mode = "bootstrap_catchup"
)

// Checkpoint is a consumer's position. The zero value is not valid; use
// Start for "from the beginning".
type Checkpoint struct {
	V    int    `json:"v"`
	Mode Mode   `json:"mode"`
	SCN  uint64 `json:"scn"` // last fully processed window
	// Bootstrap holds bootstrap progress; set only in bootstrap modes.
	Bootstrap *Bootstrap `json:"bootstrap,omitempty"`
}

// Bootstrap is the progress of a bootstrap (see the bootstrap service).
//
// In mode bootstrap_snapshot, StartSCN is the SCN the snapshot is taken at,
// After the bootstrap server's opaque token of the last row delivered (""
// before the first page) and Rows the rows delivered so far; TargetSCN
// equals StartSCN until the snapshot ends. In mode bootstrap_catchup, the
// checkpoint's SCN is the last log window delivered and TargetSCN the window
// after which the consumer returns to the relay. Store is the identity of
// the bootstrap store the progress belongs to: a server refuses a
// checkpoint of another store. A snapshot checkpoint with an empty Store
// asks for a new bootstrap (see FullHistory).
type Bootstrap struct {
	StartSCN  uint64 `json:"startScn"`
	TargetSCN uint64 `json:"targetScn"`
	Store     string `json:"store,omitempty"`
	Source    string `json:"source,omitempty"`
	After     string `json:"after,omitempty"`
	Rows      uint64 `json:"rows,omitempty"`
}

// Start returns the online checkpoint before the first window of history.
func Start() Checkpoint { return Checkpoint{V: Version, Mode: Online} }

// At returns the online checkpoint after window scn.
func At(scn uint64) Checkpoint { return Checkpoint{V: Version, Mode: Online, SCN: scn} }

// FullHistory returns the checkpoint of a consumer that wants the whole
// history: a bootstrap snapshot not started yet. A client with a bootstrap
// server starts from it with a consistent snapshot, then catches up and goes
// online.
func FullHistory() Checkpoint {
	return Checkpoint{V: Version, Mode: BootstrapSnapshot, Bootstrap: &Bootstrap{}}
}

// IsNewBootstrap reports whether c asks for a bootstrap that has not started
// (FullHistory): no store chosen and no progress.
func (c Checkpoint) IsNewBootstrap() bool {
	b := c.Bootstrap
	return c.Mode == BootstrapSnapshot && b != nil && b.Store == "" && b.After == "" && b.Rows == 0 && b.StartSCN == 0
}

// ErrInvalid is wrapped by every error Parse and Validate return.
var ErrInvalid = errors.New("databus: invalid checkpoint")

// MaxSize bounds the JSON form a parser accepts.
const MaxSize = 64 << 10

// Parse decodes and validates the JSON form of a checkpoint.
func Parse(b []byte) (Checkpoint, error) {
	var c Checkpoint
	if len(b) > MaxSize {
		return c, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(b), MaxSize)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return Checkpoint{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if err := c.Validate(); err != nil {
		return Checkpoint{}, err
	}
	return c, nil
}

// Validate reports the first inconsistency in c, naming the field.
func (c Checkpoint) Validate() error {
	if c.V != Version {
		return fmt.Errorf("%w: field \"v\" is %d, want %d", ErrInvalid, c.V, Version)
	}
	switch c.Mode {
	case Online:
		if c.Bootstrap != nil {
			return fmt.Errorf("%w: field \"bootstrap\" is set in mode %q", ErrInvalid, c.Mode)
		}
	case BootstrapSnapshot, BootstrapCatchup:
		b := c.Bootstrap
		if b == nil {
			return fmt.Errorf("%w: mode %q needs field \"bootstrap\"", ErrInvalid, c.Mode)
		}
		if b.TargetSCN < b.StartSCN {
			return fmt.Errorf("%w: bootstrap.targetScn %d is before bootstrap.startScn %d", ErrInvalid, b.TargetSCN, b.StartSCN)
		}
		if c.Mode == BootstrapSnapshot && b.TargetSCN != b.StartSCN {
			return fmt.Errorf("%w: bootstrap.targetScn %d differs from bootstrap.startScn %d during a snapshot", ErrInvalid, b.TargetSCN, b.StartSCN)
		}
		if c.Mode == BootstrapSnapshot && b.Store == "" && (b.After != "" || b.Rows != 0 || b.StartSCN != 0) {
			return fmt.Errorf("%w: bootstrap.store is missing from a snapshot in progress", ErrInvalid)
		}
		if c.Mode == BootstrapCatchup && (c.SCN < b.StartSCN || c.SCN > b.TargetSCN) {
			return fmt.Errorf("%w: scn %d is outside the catch-up range [%d, %d]", ErrInvalid, c.SCN, b.StartSCN, b.TargetSCN)
		}
		if c.Mode == BootstrapCatchup && b.Store == "" {
			return fmt.Errorf("%w: bootstrap.store is missing in mode %q", ErrInvalid, c.Mode)
		}
	case "":
		return fmt.Errorf("%w: field \"mode\" is missing", ErrInvalid)
	default:
		return fmt.Errorf("%w: field \"mode\" is %q, want one of online, bootstrap_snapshot, bootstrap_catchup", ErrInvalid, c.Mode)
	}
	return nil
}

// MarshalText returns the JSON form; it makes a Checkpoint usable as a
// query parameter and a flag value.
func (c Checkpoint) String() string {
	b, _ := json.Marshal(c)
	return string(b)
}
