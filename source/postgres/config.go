package postgres

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/databus-go/databus/secret"
)

// Defaults applied to the zero fields of Config.
const (
	DefaultPublication       = "databus"
	DefaultSlot              = "databus"
	DefaultHeartbeatInterval = time.Second
	DefaultStatusInterval    = 10 * time.Second
	DefaultMinBackoff        = 100 * time.Millisecond
	DefaultMaxBackoff        = 30 * time.Second
	DefaultChunkBytes        = 8 << 20
	DefaultChunkEvents       = 10000
)

// ErrConfig is wrapped by every error Config.Validate returns.
var ErrConfig = errors.New("databus: postgres: invalid config")

// Config configures a PostgreSQL source. It is a plain struct so that it can
// be embedded in the relay's YAML configuration; the zero value of every
// optional field means its default.
//
//	source:
//	  postgres:
//	    connString: postgres://databus:${DATABUS_PG_PASSWORD}@db1.internal:5432/shop?sslmode=verify-full
//	    tables: [public.orders, public.order_lines]
//	    publication: databus
//	    slot: databus
//	    stateDir: /var/lib/databus/relay
type Config struct {
	// ConnString is a libpq connection string or URL naming the database to
	// capture (postgres://user:password@host:5432/db?sslmode=require). The
	// role needs LOGIN and REPLICATION (or superuser); to create the
	// publication it must own the tables. The adapter adds
	// replication=database itself for the replication connection. It is
	// never logged.
	ConnString Secret `yaml:"connString" json:"connString"`
	// Tables lists the captured tables as "schema.table", spelled as the
	// catalog spells them (unquoted, case-sensitive): "public.orders". The
	// logical source name is the same string. The watermark table of a
	// bootstrap seed in each of their schemas,
	// "<schema>._databus_watermark", is captured too once it exists (see
	// "Seeding" in the package doc).
	Tables []string `yaml:"tables" json:"tables"`
	// Publication is the publication the slot decodes with. Default
	// "databus".
	Publication string `yaml:"publication" json:"publication"`
	// Slot is the logical replication slot (plugin pgoutput). Slot names are
	// cluster-wide: give every relay capturing the cluster its own. Default
	// "databus".
	Slot string `yaml:"slot" json:"slot"`
	// CreatePublication makes Open create the publication (FOR TABLE the
	// configured tables and the existing watermark tables) when it is
	// absent, and add configured tables it lacks; it lets Open and
	// ChunkReader.WriteWatermark add watermark tables. Default true (nil);
	// false makes a missing publication or table an error (a missing
	// watermark table only for WriteWatermark: Open logs a warning).
	CreatePublication *bool `yaml:"createPublication" json:"createPublication"`
	// CreateSlot makes Open create the slot when it is absent. Default true
	// (nil); false makes a missing slot an error.
	CreateSlot *bool `yaml:"createSlot" json:"createSlot"`
	// StateDir is the directory of postgres-schemas.json, the persisted map
	// from table definitions to logical source ids and schema versions, and
	// of postgres-spill/, where streamed transactions wait for their commit
	// (temporary files, emptied by Open and Close). Required; the relay
	// passes <relay.stateDir>/postgres.
	StateDir string `yaml:"stateDir" json:"stateDir"`
	// HeartbeatInterval is how long the stream may stay without a window
	// before the adapter writes a heartbeat message into the WAL, which
	// becomes an empty window. Default 1s.
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval" json:"heartbeatInterval"`
	// StatusInterval is the period of standby status updates (which also
	// carry confirmations). Keep it well below the server's
	// wal_sender_timeout (60s by default). Default 10s.
	StatusInterval time.Duration `yaml:"statusInterval" json:"statusInterval"`
	// MinBackoff and MaxBackoff bound the capped exponential wait between
	// reconnection attempts. Defaults 100ms and 30s.
	MinBackoff time.Duration `yaml:"minBackoff" json:"minBackoff"`
	MaxBackoff time.Duration `yaml:"maxBackoff" json:"maxBackoff"`
	// ProtocolVersion is the pgoutput protocol version: 0 (the default)
	// picks 2 with streaming of large in-progress transactions on
	// PostgreSQL 14 and later, 1 elsewhere; 1 forces version 1 (no
	// streaming, no heartbeat messages); 2 requires PostgreSQL 14.
	ProtocolVersion int `yaml:"protocolVersion" json:"protocolVersion"`
	// ChunkBytes and ChunkEvents bound the events of one transaction the
	// adapter holds in memory: once a transaction's events not yet handed
	// to the relay take ChunkBytes (keys and row images, plus about 128
	// bytes an event) or number ChunkEvents, they are handed over as a
	// chunk (source.Window.Partial), which the relay spools, so a
	// transaction of any size passes through bounded memory (see "Large
	// transactions and memory" in the package doc). Defaults 8 MiB
	// (8388608; at least 4096) and 10000 events.
	ChunkBytes  int64 `yaml:"chunkBytes" json:"chunkBytes"`
	ChunkEvents int   `yaml:"chunkEvents" json:"chunkEvents"`
}

// Validate checks c and returns an error wrapping ErrConfig that names the
// first bad field. It does not touch the server.
func (c *Config) Validate() error {
	if c.ConnString == "" {
		return fmt.Errorf("%w: ConnString is empty", ErrConfig)
	}
	if _, err := pgconn.ParseConfig(string(c.ConnString)); err != nil {
		// pgconn redacts the password in its parse errors.
		return fmt.Errorf("%w: ConnString: %v", ErrConfig, err)
	}
	if len(c.Tables) == 0 {
		return fmt.Errorf("%w: Tables is empty", ErrConfig)
	}
	seen := map[string]bool{}
	for i, t := range c.Tables {
		ns, name, ok := strings.Cut(t, ".")
		switch {
		case !ok || ns == "" || name == "":
			return fmt.Errorf("%w: Tables[%d] %q is not of the form schema.table", ErrConfig, i, t)
		case strings.Contains(name, "."):
			return fmt.Errorf("%w: Tables[%d] %q: names containing '.' are not supported", ErrConfig, i, t)
		case strings.ContainsRune(t, 0):
			return fmt.Errorf("%w: Tables[%d] %q contains a NUL character", ErrConfig, i, t)
		case seen[t]:
			return fmt.Errorf("%w: Tables[%d] %q is listed twice", ErrConfig, i, t)
		}
		seen[t] = true
	}
	if c.Publication != "" {
		if err := validName(c.Publication, false); err != nil {
			return fmt.Errorf("%w: Publication %q: %v", ErrConfig, c.Publication, err)
		}
	}
	if c.Slot != "" {
		if err := validName(c.Slot, true); err != nil {
			return fmt.Errorf("%w: Slot %q: %v", ErrConfig, c.Slot, err)
		}
	}
	switch {
	case c.StateDir == "":
		return fmt.Errorf("%w: StateDir is empty (the schema history is persisted there)", ErrConfig)
	case c.HeartbeatInterval < 0:
		return fmt.Errorf("%w: HeartbeatInterval %v is negative", ErrConfig, c.HeartbeatInterval)
	case c.HeartbeatInterval != 0 && c.HeartbeatInterval < time.Millisecond:
		return fmt.Errorf("%w: HeartbeatInterval %v is below 1ms", ErrConfig, c.HeartbeatInterval)
	case c.StatusInterval < 0:
		return fmt.Errorf("%w: StatusInterval %v is negative", ErrConfig, c.StatusInterval)
	case c.StatusInterval != 0 && c.StatusInterval < time.Millisecond:
		return fmt.Errorf("%w: StatusInterval %v is below 1ms", ErrConfig, c.StatusInterval)
	case c.MinBackoff < 0:
		return fmt.Errorf("%w: MinBackoff %v is negative", ErrConfig, c.MinBackoff)
	case c.MaxBackoff < 0:
		return fmt.Errorf("%w: MaxBackoff %v is negative", ErrConfig, c.MaxBackoff)
	case c.ProtocolVersion < 0 || c.ProtocolVersion > 2:
		return fmt.Errorf("%w: ProtocolVersion %d is not 0 (automatic), 1 or 2", ErrConfig, c.ProtocolVersion)
	case c.ChunkBytes != 0 && c.ChunkBytes < 4096:
		return fmt.Errorf("%w: ChunkBytes %d is below 4096", ErrConfig, c.ChunkBytes)
	case c.ChunkEvents < 0:
		return fmt.Errorf("%w: ChunkEvents %d is negative", ErrConfig, c.ChunkEvents)
	}
	if d := c.withDefaults(); d.MinBackoff > d.MaxBackoff {
		return fmt.Errorf("%w: MinBackoff %v is above MaxBackoff %v", ErrConfig, d.MinBackoff, d.MaxBackoff)
	}
	return nil
}

// validName checks a publication or slot name. Slot names may only hold
// lower-case letters, digits and underscores; publication names are
// identifiers, quoted by the adapter, so anything printable goes.
func validName(s string, slot bool) error {
	if len(s) > 63 {
		return errors.New("longer than 63 bytes")
	}
	for _, r := range s {
		switch {
		case slot && !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_'):
			return errors.New("slot names may only contain lower-case letters, digits and underscores")
		case r < ' ' || r == '"':
			return errors.New("contains a control character or a double quote")
		}
	}
	return nil
}

// withDefaults returns c with its zero fields replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.Publication == "" {
		c.Publication = DefaultPublication
	}
	if c.Slot == "" {
		c.Slot = DefaultSlot
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.ChunkEvents == 0 {
		c.ChunkEvents = DefaultChunkEvents
	}
	c.Tables = append([]string(nil), c.Tables...)
	return c
}

func (c *Config) createPublication() bool { return c.CreatePublication == nil || *c.CreatePublication }
func (c *Config) createSlot() bool        { return c.CreateSlot == nil || *c.CreateSlot }

// Secret is a string that never shows in logs or formatted output.
type Secret = secret.String
