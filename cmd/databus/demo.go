package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source/sqlite"
)

type demoOptions struct {
	dir      string
	listen   string
	rate     float64
	duration time.Duration
	initial  int
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Create a sample SQLite database, capture it, write changes and show them streaming",
		Long: `Creates a SQLite database with sample tables, starts a relay on it and a
bootstrap service fed by the relay, inserts a first batch of rows (more than
the relay's deliberately small buffer holds), then writes a stream of sample
changes. It prints the full history as it arrives (JSON lines on stdout): a
bootstrap snapshot, with a progress line on stderr, then the live stream.
Everything keeps serving until you stop the demo, so you can curl it, tail it
from another terminal, or write to the database with any SQLite client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("log-level") {
				// The demo's output is the stream; only problems should interrupt it.
				slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})))
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "directory for the database and relay state (default: a new temporary directory)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "relay address; a free port is used when this one is taken")
	f.Float64Var(&o.rate, "rate", 2, "sample transactions per second (0: write nothing)")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until interrupted)")
	f.IntVar(&o.initial, "initial-rows", 20000, "people to insert at the start, more than the relay's small buffer holds, so that a tail from the start bootstraps")
	return cmd
}

const demoSchema = `
CREATE TABLE IF NOT EXISTS person (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT,
  score REAL,
  updated_at TEXT
);
CREATE TABLE IF NOT EXISTS orders (
  id INTEGER PRIMARY KEY,
  person_id INTEGER NOT NULL,
  amount TEXT NOT NULL,
  status TEXT NOT NULL
);`

func runDemo(ctx context.Context, stdout, stderr io.Writer, o demoOptions) error {
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "databus-demo-")
		if err != nil {
			return err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dbPath := filepath.Join(dir, "demo.db")
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, demoSchema); err != nil {
		return fmt.Errorf("create the demo tables: %w", err)
	}

	listen := o.listen
	if l, err := net.Listen("tcp", listen); err != nil {
		fmt.Fprintf(stderr, "%s is taken; using a free port\n", listen)
		listen = "127.0.0.1:0"
	} else {
		l.Close()
	}
	log := slog.Default()
	src, err := sqlite.New(sqlite.Config{Path: dbPath, Tables: []string{"person", "orders"}, HeartbeatInterval: 2 * time.Second}, log)
	if err != nil {
		return err
	}
	// A buffer far smaller than the initial rows: a consumer from the start
	// has to bootstrap, which is what the demo shows.
	r, err := relay.New(relay.Config{Listen: listen, StateDir: filepath.Join(dir, "state"), Buffer: relay.BufferConfig{MaxBytes: 1 << 20}}, src, log, prometheus.NewRegistry())
	if err != nil {
		src.Close()
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- r.Run(ctx)
		cancel()
	}()
	url, err := waitAddr(ctx, r)
	if err != nil {
		cancel()
		wg.Wait()
		return firstError(errs, err)
	}
	bootURL := make(chan string, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := runBootstrap(ctx, demoBootstrap(dir, url), log, prometheus.NewRegistry(), func(u string) { bootURL <- u })
		if err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("bootstrap: %w", err)
		}
		cancel()
	}()
	var boot string
	select {
	case boot = <-bootURL:
	case <-ctx.Done():
		wg.Wait()
		return firstError(errs, nil)
	}
	fmt.Fprintf(stderr, `
databus demo
  database   %s   (tables person, orders)
  relay      %s   (buffer 1 MiB)
  bootstrap  %s   (store %s)
  try, in another terminal:
    curl %s/v1/sources
    curl '%s/v1/stream?checkpoint={"v":1,"mode":"online","scn":0}&format=json&wait=0s'
    go run ./cmd/databus tail --relay %s --bootstrap %s --from-start --sources main.person
    sqlite3 %s "INSERT INTO person(name, email) VALUES ('you', 'you@example.com')"
  every change below was captured from the database's change log and streamed by the relay;
  the first %d people come from the bootstrap snapshot. Ctrl-C stops the demo.

`, dbPath, url, boot, filepath.Join(dir, "bootstrap.db"), url, url, url, boot, dbPath, o.initial)
	if err := insertInitial(ctx, db, o.initial); err != nil {
		cancel()
		wg.Wait()
		return firstError(errs, fmt.Errorf("initial rows: %w", err))
	}

	if o.rate > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := writeSamples(ctx, db, o.rate); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("sample writer: %w", err)
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := runTail(ctx, stdout, tailOptions{relays: []string{url}, bootstraps: []string{boot}, fromStart: true, progress: stderr})
		if err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("tail: %w", err)
			cancel()
		}
	}()
	wg.Wait()
	return firstError(errs, nil)
}

func firstError(errs chan error, fallback error) error {
	for {
		select {
		case err := <-errs:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
		default:
			return fallback
		}
	}
}

// waitAddr waits until the relay listens and returns its base URL.
func waitAddr(ctx context.Context, r *relay.Relay) (string, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if a := r.Addr(); a != "" {
			return "http://" + a, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the relay did not start: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// insertInitial inserts n people in transactions of 1000.
func insertInitial(ctx context.Context, db *sql.DB, n int) error {
	for done := 0; done < n; {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO person(name, email, score, updated_at) VALUES (?, ?, ?, ?)`)
		if err != nil {
			tx.Rollback()
			return err
		}
		now := time.Now().UTC().Format(time.RFC3339Nano)
		for end := min(done+1000, n); done < end; done++ {
			name := demoNames[done%len(demoNames)]
			if _, err := stmt.ExecContext(ctx, name, fmt.Sprintf("%s%d@example.com", name, done), float64(done%100), now); err != nil {
				tx.Rollback()
				return err
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

var demoNames = []string{"Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger", "Radia"}

// writeSamples writes small multi-statement transactions at about rate per
// second: new people and orders, score updates and a few deletes.
func writeSamples(ctx context.Context, db *sql.DB, rate float64) error {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := sampleTxn(ctx, db); err != nil {
			return err
		}
	}
}

func sampleTxn(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().UTC().Format(time.RFC3339Nano)
	name := demoNames[rand.IntN(len(demoNames))]
	switch rand.IntN(4) {
	case 0, 1:
		res, err := tx.ExecContext(ctx, `INSERT INTO person(name, email, score, updated_at) VALUES (?, ?, ?, ?)`,
			name, fmt.Sprintf("%s%d@example.com", name, rand.IntN(1000)), rand.Float64()*100, now)
		if err != nil {
			return err
		}
		id, _ := res.LastInsertId()
		if _, err := tx.ExecContext(ctx, `INSERT INTO orders(person_id, amount, status) VALUES (?, ?, 'new')`,
			id, fmt.Sprintf("%d.%02d", rand.IntN(500), rand.IntN(100))); err != nil {
			return err
		}
	case 2:
		if _, err := tx.ExecContext(ctx, `UPDATE person SET score = ?, updated_at = ? WHERE id = (SELECT id FROM person ORDER BY random() LIMIT 1)`,
			rand.Float64()*100, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE orders SET status = 'shipped' WHERE id = (SELECT id FROM orders WHERE status = 'new' ORDER BY id LIMIT 1)`); err != nil {
			return err
		}
	case 3:
		if _, err := tx.ExecContext(ctx, `DELETE FROM orders WHERE id = (SELECT id FROM orders WHERE status = 'shipped' ORDER BY id LIMIT 1)`); err != nil {
			return err
		}
	}
	return tx.Commit()
}
