package server

import (
	"errors"
	"fmt"
	"strings"

	"github.com/databus-go/databus/internal/httpapi"
	"github.com/databus-go/databus/secret"
)

// Config is the bootstrap server's configuration, as the CLI reads it from
// the `server:` part of the bootstrap section of its YAML file. The zero
// value of every field means its default.
//
//	server:
//	  listen: 127.0.0.1:8081
//	  authToken: ${DATABUS_BOOTSTRAP_TOKEN}
//	  maxBytes: 1048576
//	  maxRows: 10000
type Config struct {
	// Listen is the TCP address of the HTTP API. Default 127.0.0.1:8081;
	// a port of 0 picks a free one (see Server.Addr).
	Listen string `yaml:"listen" json:"listen"`
	// AuthToken, when set, is the bearer token every request but /healthz
	// must carry (`Authorization: Bearer <token>`), /metrics and the
	// status page included, since they name the store's tables. It is
	// never logged.
	AuthToken secret.String `yaml:"authToken" json:"authToken"`
	// MaxBytes is the byte budget of a /v1/snapshot or /v1/catchup response
	// whose request has no maxBytes parameter. Default 1 MiB (1048576);
	// 1024..64 MiB, the range of the parameter.
	MaxBytes int `yaml:"maxBytes" json:"maxBytes"`
	// MaxRows is the row budget of a /v1/snapshot response whose request
	// has no maxRows parameter. Default 10000; 1..1000000.
	MaxRows int `yaml:"maxRows" json:"maxRows"`
}

// Defaults and bounds.
const (
	DefaultListen   = "127.0.0.1:8081"
	DefaultMaxBytes = 1 << 20
	DefaultMaxRows  = 10_000
	// MinMaxBytes and MaxMaxBytes bound maxBytes, in the configuration and
	// in requests.
	MinMaxBytes = 1 << 10
	MaxMaxBytes = 64 << 20
	// MaxMaxRows bounds maxRows (at least 1).
	MaxMaxRows = 1_000_000
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxRows == 0 {
		c.MaxRows = DefaultMaxRows
	}
	return c
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("databus: invalid bootstrap server configuration")

// Validate reports the first bad field of c (after defaults), naming it as
// it is spelled in YAML.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if err := httpapi.CheckListen(c.Listen); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if c.MaxBytes < MinMaxBytes || c.MaxBytes > MaxMaxBytes {
		return fmt.Errorf("%w: maxBytes %d is out of range; want %d..%d", ErrConfig, c.MaxBytes, MinMaxBytes, MaxMaxBytes)
	}
	if c.MaxRows < 1 || c.MaxRows > MaxMaxRows {
		return fmt.Errorf("%w: maxRows %d is out of range; want 1..%d", ErrConfig, c.MaxRows, MaxMaxRows)
	}
	if strings.ContainsAny(string(c.AuthToken), " \t\r\n") {
		return fmt.Errorf("%w: authToken contains white space", ErrConfig)
	}
	return nil
}
