package mysql

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/databus-go/databus/secret"
	"github.com/databus-go/databus/source"
)

// Defaults applied to the zero fields of Config.
const (
	DefaultPort              = 3306
	DefaultServerID          = 1001
	DefaultHeartbeatInterval = time.Second
	DefaultMinBackoff        = 100 * time.Millisecond
	DefaultMaxBackoff        = 30 * time.Second
	DefaultChunkBytes        = 8 << 20
	DefaultChunkEvents       = 10000
)

// Start positions for a run from the zero source.Position.
const (
	StartAtEnd    = "end"    // the current end of the binlog (the default)
	StartAtOldest = "oldest" // the start of the oldest binlog file the server still has
)

// Flavors.
const (
	FlavorAuto    = ""        // detected from the server's version string
	FlavorMariaDB = "mariadb" // MariaDB (GTIDs domain-server-seq)
	FlavorMySQL   = "mysql"   // MySQL (GTIDs uuid:seq)
)

// ErrConfig is wrapped by every error Config.Validate returns.
var ErrConfig = errors.New("databus: mysql: invalid config")

// Config configures a MariaDB/MySQL source. It is a plain struct so that it
// can be embedded in the relay's YAML configuration; the zero value of every
// optional field means its default.
//
//	source:
//	  mysql:
//	    host: db1.internal
//	    port: 3306
//	    user: databus
//	    password: ${DATABUS_MYSQL_PASSWORD}
//	    serverId: 1001
//	    include: ["shop.*"]
//	    exclude: ["shop.tmp_*"]
//	    stateDir: /var/lib/databus/relay
type Config struct {
	// Host and Port of the server. Port defaults to 3306.
	Host string `yaml:"host" json:"host"`
	Port int    `yaml:"port" json:"port"`
	// User and Password of the capture account. It needs SELECT (for the
	// catalog read by Open), REPLICATION SLAVE (the binlog stream) and
	// BINLOG MONITOR (MariaDB; REPLICATION CLIENT on MySQL) for SHOW MASTER
	// STATUS and SHOW BINARY LOGS. The password is never logged.
	User     string `yaml:"user" json:"user"`
	Password Secret `yaml:"password" json:"password"`
	// ServerID is the replica server id the adapter registers with; it must
	// differ from the server's own server_id and from every other replica's.
	// Default 1001.
	ServerID uint32 `yaml:"serverId" json:"serverId"`
	// Flavor is "mariadb", "mysql" or empty to detect it from the server's
	// version string.
	Flavor string `yaml:"flavor" json:"flavor"`
	// Include lists the captured tables as "db.table" patterns in which '*'
	// matches any run of characters (for example "shop.*" or "*.orders").
	// Empty means every table. Names are matched case-sensitively, as the
	// server spells them. The system schemas (mysql, information_schema,
	// performance_schema, sys) are never captured.
	//
	// The seed watermark table, db._databus_watermark
	// (source.WatermarkTableName), is captured in every database that the
	// database part of some Include pattern matches (every database when
	// Include is empty), even when no pattern names it and whatever Exclude
	// says: a bootstrap seed of a table of db writes its watermarks there
	// and waits for them in the stream.
	Include []string `yaml:"include" json:"include"`
	// Exclude lists patterns of tables not to capture even if included.
	// It does not apply to the seed watermark table (see Include).
	Exclude []string `yaml:"exclude" json:"exclude"`
	// StateDir is the directory of mysql-schemas.json, the persisted map
	// from table definitions to logical source ids and schema versions.
	// Required; the relay passes its own state directory.
	StateDir string `yaml:"stateDir" json:"stateDir"`
	// HeartbeatInterval is the server heartbeat period and the least time
	// between two empty windows. Default 1s.
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval" json:"heartbeatInterval"`
	// HeartbeatTable, "db.table", makes the adapter write one row of that
	// table every HeartbeatInterval (creating the table if needed), so that
	// the binlog position, and with it the SCN, advances on an otherwise
	// idle server. It needs CREATE, INSERT and UPDATE on the table. Empty
	// (the default) means no writes: a fully idle server then yields no new
	// SCN. The table is never captured.
	HeartbeatTable string `yaml:"heartbeatTable" json:"heartbeatTable"`
	// MinBackoff and MaxBackoff bound the capped exponential wait between
	// reconnection attempts. Defaults 100ms and 30s.
	MinBackoff time.Duration `yaml:"minBackoff" json:"minBackoff"`
	MaxBackoff time.Duration `yaml:"maxBackoff" json:"maxBackoff"`
	// StartAt says where a run from the zero source.Position starts: "end"
	// (the default: the current end of the binlog, what a new relay wants)
	// or "oldest" (the oldest binlog file the server still has).
	StartAt string `yaml:"startAt" json:"startAt"`
	// ChunkBytes and ChunkEvents bound the memory a transaction's events
	// take in the adapter before its commit: once the events read so far
	// take ChunkBytes (keys and row images, plus about 128 bytes an event)
	// or number ChunkEvents, they are handed to the relay as a chunk
	// (source.Window.Partial), which spools them, so a transaction of any
	// size passes through bounded memory. Defaults 8 MiB (8388608; at least
	// 4096) and 10000 events (at least 1).
	ChunkBytes  int64 `yaml:"chunkBytes" json:"chunkBytes"`
	ChunkEvents int   `yaml:"chunkEvents" json:"chunkEvents"`
}

// Validate checks c and returns an error wrapping ErrConfig that names the
// first bad field. It does not touch the server.
func (c *Config) Validate() error {
	switch {
	case c.Host == "":
		return fmt.Errorf("%w: Host is empty", ErrConfig)
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("%w: Port %d is not in 1..65535", ErrConfig, c.Port)
	case c.User == "":
		return fmt.Errorf("%w: User is empty", ErrConfig)
	case c.StateDir == "":
		return fmt.Errorf("%w: StateDir is empty (the schema history is persisted there)", ErrConfig)
	case c.Flavor != FlavorAuto && c.Flavor != FlavorMariaDB && c.Flavor != FlavorMySQL:
		return fmt.Errorf("%w: Flavor %q is not %q, %q or empty (detect)", ErrConfig, c.Flavor, FlavorMariaDB, FlavorMySQL)
	case c.HeartbeatInterval < 0:
		return fmt.Errorf("%w: HeartbeatInterval %v is negative", ErrConfig, c.HeartbeatInterval)
	case c.HeartbeatInterval != 0 && c.HeartbeatInterval < time.Millisecond:
		return fmt.Errorf("%w: HeartbeatInterval %v is below 1ms", ErrConfig, c.HeartbeatInterval)
	case c.MinBackoff < 0:
		return fmt.Errorf("%w: MinBackoff %v is negative", ErrConfig, c.MinBackoff)
	case c.MaxBackoff < 0:
		return fmt.Errorf("%w: MaxBackoff %v is negative", ErrConfig, c.MaxBackoff)
	case c.ChunkBytes != 0 && c.ChunkBytes < 4096:
		return fmt.Errorf("%w: ChunkBytes %d is below 4096", ErrConfig, c.ChunkBytes)
	case c.ChunkEvents < 0:
		return fmt.Errorf("%w: ChunkEvents %d is negative", ErrConfig, c.ChunkEvents)
	case c.StartAt != "" && c.StartAt != StartAtEnd && c.StartAt != StartAtOldest:
		return fmt.Errorf("%w: StartAt %q is not %q or %q", ErrConfig, c.StartAt, StartAtEnd, StartAtOldest)
	}
	d := c.withDefaults()
	if d.MinBackoff > d.MaxBackoff {
		return fmt.Errorf("%w: MinBackoff %v is above MaxBackoff %v", ErrConfig, d.MinBackoff, d.MaxBackoff)
	}
	for i, p := range c.Include {
		if err := validPattern(p); err != nil {
			return fmt.Errorf("%w: Include[%d] %q: %v", ErrConfig, i, p, err)
		}
	}
	for i, p := range c.Exclude {
		if err := validPattern(p); err != nil {
			return fmt.Errorf("%w: Exclude[%d] %q: %v", ErrConfig, i, p, err)
		}
	}
	if c.HeartbeatTable != "" {
		db, table, ok := strings.Cut(c.HeartbeatTable, ".")
		if !ok || db == "" || table == "" || strings.ContainsAny(c.HeartbeatTable, "`*\x00") {
			return fmt.Errorf("%w: HeartbeatTable %q is not of the form db.table", ErrConfig, c.HeartbeatTable)
		}
	}
	return nil
}

// withDefaults returns c with its zero fields replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.ServerID == 0 {
		c.ServerID = DefaultServerID
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.StartAt == "" {
		c.StartAt = StartAtEnd
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.ChunkEvents == 0 {
		c.ChunkEvents = DefaultChunkEvents
	}
	c.Include = append([]string(nil), c.Include...)
	c.Exclude = append([]string(nil), c.Exclude...)
	return c
}

// addr is host:port.
func (c *Config) addr() string {
	if strings.Contains(c.Host, ":") {
		return "[" + c.Host + "]:" + strconv.Itoa(c.Port)
	}
	return c.Host + ":" + strconv.Itoa(c.Port)
}

func validPattern(p string) error {
	db, table, ok := strings.Cut(p, ".")
	switch {
	case !ok:
		return errors.New(`not of the form "db.table" (use "db.*" for every table of db)`)
	case db == "" || table == "":
		return errors.New("empty database or table part")
	case strings.ContainsRune(p, 0):
		return errors.New("contains a NUL character")
	}
	return nil
}

// systemSchemas are never captured.
var systemSchemas = map[string]bool{
	"mysql": true, "information_schema": true, "performance_schema": true, "sys": true,
}

// filter decides which tables are captured. It is immutable.
type filter struct {
	include, exclude [][2]string
	heartbeat        string // db.table of the heartbeat table, never captured
}

func newFilter(c *Config) *filter {
	f := &filter{heartbeat: c.HeartbeatTable}
	split := func(ps []string) [][2]string {
		out := make([][2]string, 0, len(ps))
		for _, p := range ps {
			db, t, _ := strings.Cut(p, ".")
			out = append(out, [2]string{db, t})
		}
		return out
	}
	f.include, f.exclude = split(c.Include), split(c.Exclude)
	return f
}

// match reports whether table db.table is captured.
func (f *filter) match(db, table string) bool {
	if systemSchemas[strings.ToLower(db)] || (f.heartbeat != "" && f.heartbeat == db+"."+table) {
		return false
	}
	if table == source.WatermarkTableName {
		// A seed's watermarks must reach the stream, whatever the
		// patterns say about the table itself (see Config.Include).
		return f.includesDB(db)
	}
	in := len(f.include) == 0
	for _, p := range f.include {
		if glob(p[0], db) && glob(p[1], table) {
			in = true
			break
		}
	}
	if !in {
		return false
	}
	for _, p := range f.exclude {
		if glob(p[0], db) && glob(p[1], table) {
			return false
		}
	}
	return true
}

// includesDB reports whether some Include pattern can match a table of
// database db.
func (f *filter) includesDB(db string) bool {
	if len(f.include) == 0 {
		return true
	}
	for _, p := range f.include {
		if glob(p[0], db) {
			return true
		}
	}
	return false
}

// glob matches s against pattern p in which '*' matches any run of bytes and
// every other byte matches itself.
func glob(p, s string) bool {
	// Iterative matcher with one backtracking point: linear for the
	// patterns people write, never exponential.
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		switch {
		case px < len(p) && p[px] == '*':
			starP, starS = px, sx
			px++
		case px < len(p) && p[px] == s[sx]:
			px++
			sx++
		case starP >= 0:
			starS++
			px, sx = starP+1, starS
		default:
			return false
		}
	}
	for px < len(p) && p[px] == '*' {
		px++
	}
	return px == len(p)
}

// Secret is a string that never shows in logs or formatted output.
type Secret = secret.String
