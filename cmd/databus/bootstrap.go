package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/databus-go/databus/bootstrap"
	"github.com/databus-go/databus/bootstrap/server"
	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/pgstore"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/secret"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/mysql"
	"github.com/databus-go/databus/source/postgres"
)

// bootstrapConfig is the bootstrap section of the configuration file:
//
//	bootstrap:
//	  server:            # see server.Config
//	    listen: 127.0.0.1:8081
//	  producer:          # see bootstrap.Config; relays defaults to this file's relay.listen
//	    seed:
//	      tables: [shop.orders]   # needs source.mysql or source.postgres
//	  store:
//	    sqlite: {path: ./bootstrap.db}
//	    # or postgres: {connString: ${DATABUS_BOOTSTRAP_PG}, schema: databus_bootstrap}
type bootstrapConfig struct {
	Server   server.Config    `yaml:"server"`
	Producer bootstrap.Config `yaml:"producer"`
	Store    storeConfig      `yaml:"store"`
}

// storeConfig holds exactly one bootstrap store.
type storeConfig struct {
	SQLite   *sqliteStoreConfig `yaml:"sqlite"`
	Postgres *struct {
		ConnString secret.String `yaml:"connString"`
		Schema     string        `yaml:"schema"`
		MaxConns   int           `yaml:"maxConns"`
	} `yaml:"postgres"`
}

// sqliteStoreConfig is bootstrap.store.sqlite: the store's file.
type sqliteStoreConfig struct {
	Path string `yaml:"path"`
}

func (c *fileConfig) validateBootstrap() error {
	b := c.Bootstrap
	if b == nil {
		return errors.New("bootstrap: section missing (see `databus bootstrap --help`)")
	}
	switch {
	case b.Store.SQLite != nil && b.Store.Postgres != nil:
		return errors.New("bootstrap.store: configure exactly one of bootstrap.store.sqlite and bootstrap.store.postgres")
	case b.Store.SQLite != nil:
		if b.Store.SQLite.Path == "" {
			return errors.New("bootstrap.store.sqlite.path: missing")
		}
	case b.Store.Postgres != nil:
		if b.Store.Postgres.ConnString == "" {
			return errors.New("bootstrap.store.postgres.connString: missing")
		}
	default:
		return errors.New("bootstrap.store: configure one store: bootstrap.store.sqlite or bootstrap.store.postgres")
	}
	if len(b.Producer.Relays) == 0 && c.Relay.Listen != "" {
		b.Producer.Relays = []string{"http://" + loopbackIfUnspecified(c.Relay.Listen)}
	}
	if err := b.Producer.Validate(); err != nil {
		return fmt.Errorf("bootstrap.producer: %w", err)
	}
	if err := b.Server.Validate(); err != nil {
		return fmt.Errorf("bootstrap.server: %w", err)
	}
	if c.Source.count() == 0 {
		if len(b.Producer.Seed.Tables) > 0 {
			return errors.New("bootstrap.producer.seed.tables: seeding reads the source: configure source.mysql or source.postgres")
		}
		return nil
	}
	if err := c.validateSource(); err != nil {
		return err
	}
	if c.Source.SQLite != nil && len(b.Producer.Seed.Tables) > 0 {
		return errors.New("bootstrap.producer.seed.tables: seeding is supported for source.mysql and source.postgres, not source.sqlite")
	}
	return nil
}

// loopbackIfUnspecified turns a listen address with no host (":8080") into
// one a client can dial.
func loopbackIfUnspecified(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
		return listen
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// openStore opens the configured bootstrap store.
func (b *bootstrapConfig) openStore(ctx context.Context) (store.Store, error) {
	if p := b.Store.Postgres; p != nil {
		return pgstore.Open(ctx, string(p.ConnString), pgstore.Options{Schema: p.Schema, MaxConns: p.MaxConns})
	}
	return sqlitestore.Open(b.Store.SQLite.Path, sqlitestore.Options{})
}

// openChunkReader returns the source's chunk reader for seeding, or nil
// when the file configures no source that can be seeded.
func (c *fileConfig) openChunkReader() (source.ChunkReader, error) {
	switch {
	case c.Source.MySQL != nil:
		return mysql.NewChunkReader(*c.Source.MySQL)
	case c.Source.Postgres != nil:
		return postgres.NewChunkReader(*c.Source.Postgres)
	}
	return nil, nil
}

func newBootstrapCmd() *cobra.Command {
	var path string
	var check bool
	cmd := &cobra.Command{
		Use:   "bootstrap --config FILE",
		Short: "Keep every change durably and serve snapshots and catch-up to consumers that fell behind",
		Long: `Runs the bootstrap producer (a relay client that stores every window in a log
and the latest row of every key in a snapshot, and seeds tables from the
source) and the bootstrap server (the HTTP API clients fall back to when the
relays no longer hold their checkpoint). It reads the bootstrap section of the
configuration file, and its source section when seeding; see docs/BOOTSTRAP.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError("bootstrap needs --config FILE")
			}
			cfg, err := loadConfig(path, roleBootstrap)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", path)
				return nil
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			return runBootstrap(cmd.Context(), cfg, slog.Default(), reg, nil)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file (see README and docs/BOOTSTRAP.md)")
	cmd.Flags().BoolVar(&check, "check-config", false, "validate the configuration and exit")
	cmd.AddCommand(newSeedCmd())
	return cmd
}

// runBootstrap runs a producer and a server over one store until ctx ends
// or the producer stops for good (it cannot go on without a gap). ready,
// when not nil, receives the server's base URL once it listens.
func runBootstrap(ctx context.Context, cfg *fileConfig, log *slog.Logger, reg *prometheus.Registry, ready func(url string)) error {
	b := cfg.Bootstrap
	st, err := b.openStore(ctx)
	if err != nil {
		return fmt.Errorf("bootstrap store: %w", err)
	}
	defer st.Close()
	chunks, err := cfg.openChunkReader()
	if err != nil {
		return fmt.Errorf("seeding: %w", err)
	}
	p, err := bootstrap.NewProducer(b.Producer, st, chunks, log, reg)
	if err != nil {
		if chunks != nil {
			chunks.Close()
		}
		return err
	}
	var opts []server.Option
	if chunks != nil {
		opts = append(opts, server.WithSeeder(seeder{p}))
	}
	s, err := server.New(b.Server, st, log, reg, opts...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var perr, serr error
	wg.Go(func() {
		perr = p.Run(ctx)
		cancel()
	})
	wg.Go(func() {
		serr = s.Run(ctx)
		cancel()
	})
	if ready != nil {
		wg.Go(func() {
			select {
			case <-s.Ready():
				ready("http://" + s.Addr())
			case <-ctx.Done():
			}
		})
	}
	wg.Wait()
	if chunks != nil {
		chunks.Close()
	}
	for _, err := range []error{perr, serr} {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// seeder adapts the producer to the server's Seeder interface.
type seeder struct{ p *bootstrap.Producer }

func (s seeder) Seed(ctx context.Context, table string) (string, error) {
	run, err := s.p.Seed(ctx, table)
	switch {
	case err == nil:
		return run, nil
	case errors.Is(err, bootstrap.ErrSeedRunning):
		return "", fmt.Errorf("%w: %v", server.ErrSeedRunning, err)
	case errors.Is(err, bootstrap.ErrNoSeeding):
		return "", fmt.Errorf("%w: %v", server.ErrSeedingUnavailable, err)
	case errors.Is(err, bootstrap.ErrConfig):
		return "", fmt.Errorf("%w: %v", server.ErrUnknownTable, err)
	}
	return "", err
}

func (s seeder) SeedStatus() []server.SeedStatus {
	ss := s.p.SeedStatus()
	out := make([]server.SeedStatus, len(ss))
	for i, st := range ss {
		out[i] = server.SeedStatus(st)
	}
	return out
}

type seedOptions struct {
	server string
	token  string
	table  string
	wait   bool
}

func newSeedCmd() *cobra.Command {
	var o seedOptions
	cmd := &cobra.Command{
		Use:   "seed --server URL --table db.table",
		Short: "Copy a table's existing rows into a running bootstrap service, showing progress",
		Long: `Asks a running bootstrap service to seed one table again while streaming goes on
(a lock-free, chunked copy bracketed by watermarks), then prints its progress
(rows, rows/s, ETA) until it is done. Ctrl-C stops watching, not the seed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.table == "" {
				return usageError("seed needs --table db.table")
			}
			return runSeed(cmd.Context(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "http://"+server.DefaultListen, "bootstrap server URL")
	f.StringVar(&o.token, "token", "", "bearer token of the bootstrap server")
	f.StringVar(&o.table, "table", "", "table to seed, as db.table (schema.table for PostgreSQL)")
	f.BoolVar(&o.wait, "wait", true, "print progress until the seed is done")
	return cmd
}

func runSeed(ctx context.Context, out io.Writer, o seedOptions) error {
	hc := &http.Client{Transport: bearer(o.token), Timeout: 30 * time.Second}
	base := strings.TrimRight(o.server, "/")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/seed?table="+url.QueryEscape(o.table), nil)
	if err != nil {
		return fmt.Errorf("--server %q: %w", o.server, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	var started struct {
		Run string `json:"run"`
	}
	if err := decodeAPI(resp, &started); err != nil {
		return err
	}
	fmt.Fprintf(out, "seed of %s started (run %s)\n", o.table, started.Run)
	if !o.wait {
		return nil
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := seedInfo(ctx, hc, base, o.table, started.Run)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, seedLine(st))
		if st.Done {
			return nil
		}
	}
}

func seedInfo(ctx context.Context, hc *http.Client, base, table, run string) (server.SeedStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/info", nil)
	if err != nil {
		return server.SeedStatus{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return server.SeedStatus{}, err
	}
	var info struct {
		Seeds []server.SeedStatus `json:"seeds"`
	}
	if err := decodeAPI(resp, &info); err != nil {
		return server.SeedStatus{}, err
	}
	for _, s := range info.Seeds {
		if s.Table == table && s.Run == run {
			return s, nil
		}
	}
	return server.SeedStatus{}, fmt.Errorf("the server no longer reports seed run %s of %s", run, table)
}

func seedLine(s server.SeedStatus) string {
	line := fmt.Sprintf("seed %s: %d rows", s.Table, s.Rows)
	if s.Estimate > 0 {
		line += fmt.Sprintf(" of ~%d (%.0f%%)", s.Estimate, 100*float64(s.Rows)/float64(max(s.Estimate, s.Rows)))
	}
	if s.RowsPerSecond > 0 {
		line += fmt.Sprintf(", %.0f rows/s", s.RowsPerSecond)
	}
	if s.ETA > 0 {
		line += ", ETA " + s.ETA.Round(time.Second).String()
	}
	switch {
	case s.Done:
		line += ", done"
	case s.Error != "":
		line += ", retrying after: " + s.Error
	}
	return line
}

// decodeAPI decodes a 2xx JSON response into v, or returns the API's
// error message.
func decodeAPI(resp *http.Response, v any) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s: %s (%s)", resp.Request.URL.Redacted(), e.Error.Message, e.Error.Code)
		}
		return fmt.Errorf("%s: %s", resp.Request.URL.Redacted(), resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s: %w", resp.Request.URL.Redacted(), err)
	}
	return nil
}

// demoBootstrap is the demo's bootstrap configuration: a SQLite store in
// dir, fed by the relay at relayURL.
func demoBootstrap(dir, relayURL string) *fileConfig {
	return &fileConfig{Bootstrap: &bootstrapConfig{
		Server:   server.Config{Listen: "127.0.0.1:0"},
		Producer: bootstrap.Config{Relays: []string{relayURL}},
		Store:    storeConfig{SQLite: &sqliteStoreConfig{Path: filepath.Join(dir, "bootstrap.db")}},
	}}
}
