package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"

	"go.yaml.in/yaml/v3"

	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/mysql"
	"github.com/databus-go/databus/source/postgres"
	"github.com/databus-go/databus/source/sqlite"
)

// fileConfig is the YAML file `databus relay --config` reads:
//
//	relay:            # see relay.Config
//	  listen: 127.0.0.1:8080
//	  stateDir: ./databus-state
//	  buffer: {maxBytes: 64MiB}
//	source:
//	  sqlite:         # see sqlite.Config
//	    path: ./app.db
//	    tables: [person, orders]
//
// or source.postgres (see postgres.Config), or, for MariaDB/MySQL (see mysql.Config; its stateDir defaults to
// <relay.stateDir>/mysql):
//
//	source:
//	  mysql:
//	    host: 127.0.0.1
//	    user: databus
//	    password: ${DATABUS_MYSQL_PASSWORD}
//	    include: [shop.*]
//
// ${NAME} anywhere in the file is replaced by the environment variable NAME
// (an unset variable is an error), so secrets stay out of the file.
//
// `databus bootstrap --config` reads the same file: its bootstrap section,
// and its source section when seeding (see bootstrapConfig).
type fileConfig struct {
	Relay     relay.Config     `yaml:"relay"`
	Source    sourceConfig     `yaml:"source"`
	Bootstrap *bootstrapConfig `yaml:"bootstrap"`
}

// sourceConfig holds exactly one physical source.
type sourceConfig struct {
	SQLite   *sqlite.Config   `yaml:"sqlite"`
	MySQL    *mysql.Config    `yaml:"mysql"`
	Postgres *postgres.Config `yaml:"postgres"`
}

// count returns how many sources are configured.
func (s *sourceConfig) count() int {
	n := 0
	for _, set := range []bool{s.SQLite != nil, s.MySQL != nil, s.Postgres != nil} {
		if set {
			n++
		}
	}
	return n
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func expandEnv(b []byte) ([]byte, error) {
	var missing error
	out := envRef.ReplaceAllFunc(b, func(m []byte) []byte {
		name := string(envRef.FindSubmatch(m)[1])
		v, ok := os.LookupEnv(name)
		if !ok && missing == nil {
			missing = fmt.Errorf("environment variable %s is not set", name)
		}
		return []byte(v)
	})
	return out, missing
}

// Which part of a configuration file a command runs.
type role int

const (
	roleRelay role = iota
	roleBootstrap
)

// loadConfig reads, expands and strictly decodes path, then validates the
// part of it that r needs.
func loadConfig(path string, r role) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	raw, err = expandEnv(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var c fileConfig
	d := yaml.NewDecoder(bytes.NewReader(raw))
	d.KnownFields(true)
	// An empty file is an empty document: validate names what is missing.
	if err := d.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	validate := c.validate
	if r == roleBootstrap {
		validate = c.validateBootstrap
	}
	if err := validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func (c *fileConfig) validate() error {
	if err := c.Relay.Validate(); err != nil {
		return err
	}
	return c.validateSource()
}

// validateSource checks the source section, which must hold one source.
func (c *fileConfig) validateSource() error {
	switch {
	case c.Source.count() > 1:
		return errors.New("source: configure exactly one of source.sqlite, source.mysql and source.postgres")
	case c.Source.SQLite != nil:
		if err := c.Source.SQLite.Validate(); err != nil {
			return fmt.Errorf("source.sqlite: %w", err)
		}
		// The relay retries opening its source forever, which is right for
		// a database server that is down but not for a mistyped path: that
		// is a configuration error, reported here (and by --check-config).
		if st, err := os.Stat(c.Source.SQLite.Path); err != nil {
			return fmt.Errorf("source.sqlite.path: %w", err)
		} else if st.IsDir() {
			return fmt.Errorf("source.sqlite.path: %s is a directory", c.Source.SQLite.Path)
		}
	case c.Source.MySQL != nil:
		if c.Source.MySQL.StateDir == "" {
			c.Source.MySQL.StateDir = filepath.Join(c.Relay.StateDir, "mysql")
		}
		if err := c.Source.MySQL.Validate(); err != nil {
			return fmt.Errorf("source.mysql: %w", err)
		}
	case c.Source.Postgres != nil:
		if c.Source.Postgres.StateDir == "" {
			c.Source.Postgres.StateDir = filepath.Join(c.Relay.StateDir, "postgres")
		}
		if err := c.Source.Postgres.Validate(); err != nil {
			return fmt.Errorf("source.postgres: %w", err)
		}
	default:
		return errors.New("source: configure one source: source.sqlite, source.mysql or source.postgres")
	}
	return nil
}

// openSource builds the configured source adapter.
func (c *fileConfig) openSource(log *slog.Logger) (source.Source, error) {
	switch {
	case c.Source.MySQL != nil:
		return mysql.New(*c.Source.MySQL, mysql.WithLogger(log))
	case c.Source.Postgres != nil:
		return postgres.New(*c.Source.Postgres, postgres.WithLogger(log))
	}
	return sqlite.New(*c.Source.SQLite, log)
}
