package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/databus-go/databus/internal/httpapi"
	"github.com/databus-go/databus/secret"
)

// Config is the relay's server configuration, as the CLI reads it from the
// `relay:` section of its YAML file. The zero value of every field means its
// default; StateDir alone has none.
//
//	relay:
//	  listen: 127.0.0.1:8080
//	  stateDir: /var/lib/databus/relay
//	  buffer:
//	    maxBytes: 64MiB
//	    maxSpillBytes: 4GiB
//	  releaseInterval: 1s
//	  authToken: ${DATABUS_TOKEN}
//
// # Memory
//
// The relay holds at most Buffer.MaxBytes of windows in memory (the buffer
// charges a small per-window overhead, see buffer.Overhead; windows are
// carved from chunks of MaxBytes/16, at most 1 MiB, which adds up to two
// chunks). A window larger than MaxBytes/16 is spilled to a file under
// <stateDir>/spill/ instead, within Buffer.MaxSpillBytes of disk (see
// Relay), so a transaction of any size passes through bounded memory. Run
// sets a soft Go memory limit (runtime/debug.SetMemoryLimit) of
// Buffer.MaxBytes + 32 MiB unless the GOMEMLIMIT environment variable is
// set, so that with a full buffer the process stays within about
// Buffer.MaxBytes + 64 MiB of RSS: the garbage collector works harder
// rather than letting evicted windows and response buffers pile up. Each
// in-flight /v1/stream response adds at most 256 KiB of write buffer plus
// one filtered window (or, for a spilled window, a 64 KiB read buffer and
// one filtered frame).
type Config struct {
	// Listen is the TCP address of the HTTP API. Default 127.0.0.1:8080;
	// a port of 0 picks a free one (see Relay.Addr).
	Listen string `yaml:"listen" json:"listen"`
	// StateDir is where the relay persists its capture position
	// (position.json) and every schema version it has seen (schemas.json).
	// Required. Two relays must never share one.
	StateDir string `yaml:"stateDir" json:"stateDir"`
	// Buffer configures the in-memory event buffer.
	Buffer BufferConfig `yaml:"buffer" json:"buffer"`
	// ReleaseInterval is how often the relay persists its low watermark and
	// releases evicted windows to the source. Default 1s; at least 10ms.
	ReleaseInterval time.Duration `yaml:"releaseInterval" json:"releaseInterval"`
	// AuthToken, when set, is the bearer token every /v1 request must carry
	// (`Authorization: Bearer <token>`). /healthz, /metrics and the status
	// page stay open. It is never logged.
	AuthToken Secret `yaml:"authToken" json:"authToken"`
}

// BufferConfig configures the event buffer.
type BufferConfig struct {
	// MaxBytes bounds the memory of the windows held, e.g. 64MiB (the
	// default) or 1GiB; at least 64KiB. A window larger than MaxBytes/16 is
	// not held in memory but spilled to a file (see MaxSpillBytes) and
	// charged a few hundred bytes here.
	MaxBytes ByteSize `yaml:"maxBytes" json:"maxBytes"`
	// MaxSpillBytes bounds the disk the spilled windows take under
	// <stateDir>/spill/, e.g. 4GiB (the default); the oldest windows are
	// evicted to stay within both bounds. A single window larger than this
	// stops capture (see Relay).
	MaxSpillBytes ByteSize `yaml:"maxSpillBytes" json:"maxSpillBytes"`
}

// Defaults.
const (
	DefaultListen          = "127.0.0.1:8080"
	DefaultBufferMaxBytes  = 64 * MiB
	DefaultMaxSpillBytes   = 4 * GiB
	DefaultReleaseInterval = time.Second
	minBufferMaxBytes      = 64 * KiB
	minReleaseInterval     = 10 * time.Millisecond
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Buffer.MaxBytes == 0 {
		c.Buffer.MaxBytes = DefaultBufferMaxBytes
	}
	if c.Buffer.MaxSpillBytes == 0 {
		c.Buffer.MaxSpillBytes = DefaultMaxSpillBytes
	}
	if c.ReleaseInterval == 0 {
		c.ReleaseInterval = DefaultReleaseInterval
	}
	return c
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("databus: invalid relay configuration")

// Validate reports the first bad field of c (after defaults), naming it as
// it is spelled in YAML.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if err := httpapi.CheckListen(c.Listen); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if c.StateDir == "" {
		return fmt.Errorf("%w: stateDir is required: the directory where the relay persists its capture position", ErrConfig)
	}
	if c.Buffer.MaxBytes < minBufferMaxBytes {
		return fmt.Errorf("%w: buffer.maxBytes %v is below the minimum %v", ErrConfig, c.Buffer.MaxBytes, ByteSize(minBufferMaxBytes))
	}
	if c.Buffer.MaxSpillBytes < 0 {
		return fmt.Errorf("%w: buffer.maxSpillBytes %d is negative", ErrConfig, c.Buffer.MaxSpillBytes)
	}
	if c.ReleaseInterval < minReleaseInterval {
		return fmt.Errorf("%w: releaseInterval %v is below the minimum %v", ErrConfig, c.ReleaseInterval, minReleaseInterval)
	}
	if strings.ContainsAny(string(c.AuthToken), " \t\r\n") {
		return fmt.Errorf("%w: authToken contains white space", ErrConfig)
	}
	return nil
}

// Secret is a string that never shows in logs or formatted output.
type Secret = secret.String

// ByteSize is a number of bytes that YAML and JSON may spell as a plain
// integer (1048576) or with a unit: B, KiB, MiB, GiB, TiB (powers of 1024)
// or KB, MB, GB, TB (powers of 1000), case-insensitive, optionally with a
// space: "64MiB", "1 GiB".
type ByteSize int64

// Binary units.
const (
	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
	TiB ByteSize = 1 << 40
)

var byteUnits = []struct {
	name string
	mult ByteSize
}{
	{"tib", TiB}, {"gib", GiB}, {"mib", MiB}, {"kib", KiB},
	{"tb", 1e12}, {"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1},
}

// ParseByteSize parses the syntax described at ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	mult := ByteSize(1)
	lower := strings.ToLower(t)
	for _, u := range byteUnits {
		if strings.HasSuffix(lower, u.name) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.name)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("byte size %q: want a non-negative integer with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)", s)
	}
	if n > math.MaxInt64/int64(mult) {
		return 0, fmt.Errorf("byte size %q overflows", s)
	}
	return ByteSize(n) * mult, nil
}

// String renders the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		mult ByteSize
	}{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if b != 0 && b%u.mult == 0 {
			return strconv.FormatInt(int64(b/u.mult), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; YAML decoders use it
// for plain integers too.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// UnmarshalYAML names the line of a size that does not parse, as yaml's own
// errors do (yaml reports a TextUnmarshaler's error without a position).
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	*b = v
	return nil
}

// UnmarshalJSON accepts a JSON number or string.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		return b.UnmarshalText([]byte(s))
	}
	return b.UnmarshalText(data)
}
