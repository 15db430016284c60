package sqlite

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultPollInterval      = 10 * time.Millisecond
	DefaultHeartbeatInterval = 5 * time.Second
)

// ErrConfig is wrapped by every error Config.Validate returns.
var ErrConfig = errors.New("databus: sqlite: invalid config")

// Config configures a SQLite source. It is a plain struct so that it can be
// embedded in the relay's YAML configuration; the zero value of every
// duration means its default.
type Config struct {
	// Path is the database file. It must exist: the source never creates
	// an empty database in place of a mistyped path.
	Path string `yaml:"path" json:"path"`
	// Tables names the tables of schema "main" to capture. The logical
	// source name of table t is "main.t" (with t spelled as the database's
	// catalog spells it). Names starting with "_databus_" are reserved.
	Tables []string `yaml:"tables" json:"tables"`
	// PollInterval is how often the change log is polled, and so the
	// longest time a committed change waits before its window is closed.
	// Zero means DefaultPollInterval.
	PollInterval time.Duration `yaml:"pollInterval" json:"pollInterval"`
	// HeartbeatInterval is how long the source stays silent when no rows
	// change before it closes an empty heartbeat window. Zero means
	// DefaultHeartbeatInterval; a negative value disables heartbeats.
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval" json:"heartbeatInterval"`
}

// reservedPrefix starts the name of every object the source creates in the
// user's database.
const reservedPrefix = "_databus_"

// Validate checks c and returns an error wrapping ErrConfig that names the
// first bad field. It does not touch the database.
func (c *Config) Validate() error {
	if c.Path == "" {
		return fmt.Errorf("%w: Path is empty", ErrConfig)
	}
	if len(c.Tables) == 0 {
		return fmt.Errorf("%w: Tables is empty", ErrConfig)
	}
	seen := make(map[string]bool, len(c.Tables))
	for i, t := range c.Tables {
		switch {
		case t == "":
			return fmt.Errorf("%w: Tables[%d] is empty", ErrConfig, i)
		case strings.HasPrefix(strings.ToLower(t), reservedPrefix):
			return fmt.Errorf("%w: Tables[%d] %q: the %s prefix is reserved for databus's own tables", ErrConfig, i, t, reservedPrefix)
		case strings.ContainsRune(t, 0):
			return fmt.Errorf("%w: Tables[%d] %q contains a NUL character", ErrConfig, i, t)
		}
		// SQLite resolves names case-insensitively (ASCII only).
		k := asciiLower(t)
		if seen[k] {
			return fmt.Errorf("%w: Tables[%d] %q is listed twice", ErrConfig, i, t)
		}
		seen[k] = true
	}
	if c.PollInterval < 0 {
		return fmt.Errorf("%w: PollInterval %v is negative", ErrConfig, c.PollInterval)
	}
	return nil
}

// withDefaults returns c with its zero durations replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	c.Tables = append([]string(nil), c.Tables...)
	return c
}

// asciiLower folds ASCII letters only, as SQLite does for identifiers.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
