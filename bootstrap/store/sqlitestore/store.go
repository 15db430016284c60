package sqlitestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/databus-go/databus/bootstrap/store"
)

// Format identification in the SQLite file header.
const (
	applicationID = 0x44425354 // "DBST"
	formatVersion = 1
)

// ErrNotStore is wrapped by Open's error when the file is not a bootstrap
// store (another SQLite database, or not SQLite at all).
var ErrNotStore = errors.New("databus: not a bootstrap store")

// ErrClosed is returned by calls on a closed Store.
var ErrClosed = errors.New("databus: bootstrap store closed")

// Sync is SQLite's synchronous setting for the store's writes.
type Sync uint8

const (
	// SyncFull (the default) makes every committed batch durable before
	// Apply returns, across a power loss.
	SyncFull Sync = iota
	// SyncNormal syncs the WAL only at checkpoints: a crash of the process
	// loses nothing, a power loss may lose the last batches (the store
	// stays consistent; the producer resumes after the head it finds).
	SyncNormal
)

func (s Sync) pragma() (string, error) {
	switch s {
	case SyncFull:
		return "FULL", nil
	case SyncNormal:
		return "NORMAL", nil
	}
	return "", fmt.Errorf("databus: sqlitestore: unknown Sync value %d", s)
}

// Options configure a Store. The zero value is ready to use.
type Options struct {
	// Sync is the durability of a batch; SyncFull by default.
	Sync Sync
	// BusyTimeout is how long a call waits for another connection's lock
	// (another Store on the same file) before failing; 10s when zero.
	BusyTimeout time.Duration
	// ReadConns bounds the concurrent readers' connections; 4 when zero.
	// More concurrent reads wait for a free connection.
	ReadConns int
	// CacheMiB is the page cache of each connection, in MiB; 16 when zero.
	CacheMiB int
}

func (o *Options) withDefaults() (Options, error) {
	out := *o
	if out.BusyTimeout == 0 {
		out.BusyTimeout = 10 * time.Second
	}
	if out.ReadConns == 0 {
		out.ReadConns = 4
	}
	if out.CacheMiB == 0 {
		out.CacheMiB = 16
	}
	switch {
	case out.BusyTimeout < 0:
		return out, fmt.Errorf("databus: sqlitestore: BusyTimeout %v is negative", out.BusyTimeout)
	case out.ReadConns < 0:
		return out, fmt.Errorf("databus: sqlitestore: ReadConns %d is negative", out.ReadConns)
	case out.CacheMiB < 0:
		return out, fmt.Errorf("databus: sqlitestore: CacheMiB %d is negative", out.CacheMiB)
	}
	if _, err := out.Sync.pragma(); err != nil {
		return out, err
	}
	return out, nil
}

// Store is a bootstrap store in one SQLite file. It is safe for concurrent
// use; see the package doc for what runs concurrently.
type Store struct {
	path string
	id   string // never changes once the file exists
	w    *sql.DB
	r    *sql.DB

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens the store in the file at path, creating the file and its
// parent directory when missing. It fails with an error wrapping
// ErrNotStore when the file is not a bootstrap store, and with a clear
// message when the file is of a newer format or cannot use WAL mode.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("databus: sqlitestore: empty path")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("databus: sqlitestore: creating the store's directory: %w", err)
	}
	if err := checkHeader(path); err != nil {
		return nil, err
	}
	sync, _ := o.Sync.pragma()
	base := fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)&_pragma=cache_size(%d)",
		strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path), o.BusyTimeout.Milliseconds(), -1024*o.CacheMiB)
	w, err := sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("databus: sqlitestore: opening %s: %w", path, err)
	}
	// One write connection: Apply and Purge queue for it, and SQLite's
	// lock serialises them against other Stores on the same file.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	s := &Store{path: path, w: w}
	ctx := context.Background()
	if err := s.initialize(ctx); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("databus: sqlitestore: opening %s: %w", path, err)
	}
	r.SetMaxOpenConns(o.ReadConns)
	r.SetMaxIdleConns(o.ReadConns)
	r.SetConnMaxLifetime(0)
	s.r = r
	return s, nil
}

// checkHeader refuses a file that exists and is not an SQLite database
// before SQLite sees it, for a clearer error than "file is not a database".
func checkHeader(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("databus: sqlitestore: %w", err)
	}
	defer f.Close()
	var hdr [16]byte
	n, err := io.ReadFull(f, hdr[:])
	switch {
	case n == 0 && (err == io.EOF || err == nil):
		return nil // an empty file becomes a new store
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("databus: sqlitestore: reading %s: %w", path, err)
	case n < len(hdr) || !bytes.Equal(hdr[:], []byte("SQLite format 3\x00")):
		return fmt.Errorf("%w: %s is not an SQLite database", ErrNotStore, path)
	}
	return nil
}

const schemaSQL = `
CREATE TABLE meta (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	store_id TEXT NOT NULL,
	head INTEGER NOT NULL,
	head_time INTEGER NOT NULL,
	low_watermark INTEGER NOT NULL,
	empty INTEGER NOT NULL,
	windows INTEGER NOT NULL
);
CREATE TABLE log (
	scn INTEGER PRIMARY KEY,
	ts INTEGER NOT NULL,
	frames BLOB NOT NULL
);
CREATE TABLE snapshot (
	source INTEGER NOT NULL,
	key BLOB NOT NULL,
	scn INTEGER NOT NULL,
	deleted INTEGER NOT NULL,
	ts INTEGER,
	ikey INTEGER,
	modhash INTEGER,
	frame BLOB,
	PRIMARY KEY (source, key)
) WITHOUT ROWID;
CREATE INDEX snapshot_tombstones ON snapshot (ts) WHERE deleted = 1;
CREATE TABLE schemas (
	source INTEGER NOT NULL,
	version INTEGER NOT NULL,
	def TEXT NOT NULL,
	PRIMARY KEY (source, version)
);
CREATE TABLE seeds (
	tbl TEXT PRIMARY KEY,
	run TEXT NOT NULL,
	cursor TEXT NOT NULL,
	rows INTEGER NOT NULL,
	done INTEGER NOT NULL,
	started INTEGER,
	updated INTEGER
);
`

// initialize switches the file to WAL, creates the tables of a new store
// or checks an existing one's format, and reads the store id.
func (s *Store) initialize(ctx context.Context) error {
	var mode string
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return s.openErr(err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("databus: sqlitestore: %s cannot use WAL mode (journal_mode is %q); put the store on a local filesystem", s.path, mode)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.openErr(err)
	}
	defer tx.Rollback()
	var appID, version, objects int64
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return s.openErr(err)
	}
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return s.openErr(err)
	}
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&objects); err != nil {
		return s.openErr(err)
	}
	switch {
	case appID == 0 && version == 0 && objects == 0:
		var raw [16]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return fmt.Errorf("databus: sqlitestore: choosing a store id: %w", err)
		}
		s.id = hex.EncodeToString(raw[:])
		if _, err := tx.ExecContext(ctx, schemaSQL); err != nil {
			return fmt.Errorf("databus: sqlitestore: creating the tables of %s: %w", s.path, err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO meta (id, store_id, head, head_time, low_watermark, empty, windows) VALUES (1, ?, 0, 0, 0, 1, 0)", s.id); err != nil {
			return fmt.Errorf("databus: sqlitestore: creating the tables of %s: %w", s.path, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d; PRAGMA user_version = %d", applicationID, formatVersion)); err != nil {
			return fmt.Errorf("databus: sqlitestore: creating %s: %w", s.path, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("databus: sqlitestore: creating %s: %w", s.path, err)
		}
		return nil
	case appID != applicationID:
		return fmt.Errorf("%w: %s is an SQLite database of another application (application_id %#x, %d schema objects)", ErrNotStore, s.path, appID, objects)
	case version != formatVersion:
		return fmt.Errorf("databus: sqlitestore: %s has store format version %d; this build reads version %d", s.path, version, formatVersion)
	}
	if err := tx.QueryRowContext(ctx, "SELECT store_id FROM meta WHERE id = 1").Scan(&s.id); err != nil {
		return fmt.Errorf("%w: %s has no store identity: %v", ErrNotStore, s.path, err)
	}
	return nil
}

func (s *Store) openErr(err error) error {
	if strings.Contains(err.Error(), "file is not a database") {
		return fmt.Errorf("%w: %s is not an SQLite database", ErrNotStore, s.path)
	}
	return fmt.Errorf("databus: sqlitestore: opening %s: %w", s.path, err)
}

// Path returns the file the store is in.
func (s *Store) Path() string { return s.path }

// State implements store.Store. The ID is read once at Open; the rest in
// one read.
func (s *Store) State(ctx context.Context) (store.State, error) {
	st := store.State{ID: s.id}
	var head, headTime, lw, windows int64
	var empty bool
	err := s.r.QueryRowContext(ctx, "SELECT head, head_time, low_watermark, empty, windows FROM meta WHERE id = 1").Scan(&head, &headTime, &lw, &empty, &windows)
	if err != nil {
		return st, s.readErr("state", err)
	}
	st.Head, st.HeadTime, st.LowWatermark, st.Empty, st.Windows = uint64(head), headTime, uint64(lw), empty, uint64(windows)
	return st, nil
}

func (s *Store) readErr(what string, err error) error {
	if errors.Is(err, sql.ErrConnDone) || strings.Contains(err.Error(), "database is closed") {
		return fmt.Errorf("databus: sqlitestore: %s: %w", what, ErrClosed)
	}
	return fmt.Errorf("databus: sqlitestore: %s: %w", what, err)
}

// Close implements store.Store: it closes both connection pools (after
// their in-flight calls) and is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = errors.Join(s.r.Close(), s.w.Close())
	})
	return s.closeErr
}
