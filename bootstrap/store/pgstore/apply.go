package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
)

// ErrBadBatch is wrapped by the errors Apply returns for a batch that
// breaks the contract of store.Batch (SCN order, row kinds, frames). Such a
// batch is a producer bug: nothing of it is written.
var ErrBadBatch = errors.New("databus: bad bootstrap batch")

// Apply commits b in one transaction: log windows, snapshot rows, schema
// versions, seed progress and the new head, all or nothing. It locks the
// store's meta row, so Apply calls (and Purge) of every process sharing the
// store run one at a time; it fails with store.ErrConflict, writing
// nothing, when b.After is not the head it finds there (unless the store is
// still empty: then b.After becomes the head and the LowWatermark). It fails
// with an error wrapping ErrBadBatch, before touching the database, when
// the windows are not in strictly increasing SCN order above b.After, when
// an SCN exceeds math.MaxInt64 (the store's bigint columns), when a
// window's frames exceed what one PostgreSQL value holds (about 1 GiB), or
// when a row is malformed.
func (s *Store) Apply(ctx context.Context, b *store.Batch) error {
	if err := validate(b); err != nil {
		return err
	}
	defs := make([][]byte, len(b.Schemas))
	for i := range b.Schemas {
		def, err := json.Marshal(&b.Schemas[i])
		if err != nil {
			return fmt.Errorf("%w: schema %d version %d: %v", ErrBadBatch, b.Schemas[i].ID, b.Schemas[i].Version, err)
		}
		defs[i] = def
	}
	err := s.withConn(ctx, false, func(c *conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			return s.applyTx(ctx, tx, b, defs)
		})
	})
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return err
		}
		return fmt.Errorf("databus: bootstrap store apply: %w", err)
	}
	return nil
}

// maxValue is the largest bytea PostgreSQL stores (1 GiB less its header;
// a little less, to leave room for the protocol).
const maxValue = 1<<30 - 1<<10

// validate checks what can be checked without the database.
func validate(b *store.Batch) error {
	if b.After > math.MaxInt64 {
		return fmt.Errorf("%w: after scn %d exceeds the largest SCN the store holds (%d)", ErrBadBatch, b.After, int64(math.MaxInt64))
	}
	prev := b.After
	for i := range b.Windows {
		w := &b.Windows[i]
		if w.SCN <= prev {
			return fmt.Errorf("%w: window %d has scn %d, not above %d (windows must follow After in strictly increasing SCN order)", ErrBadBatch, i, w.SCN, prev)
		}
		if w.SCN > math.MaxInt64 {
			return fmt.Errorf("%w: window scn %d exceeds the largest SCN the store holds (%d)", ErrBadBatch, w.SCN, int64(math.MaxInt64))
		}
		prev = w.SCN
		if len(w.Frames) > maxValue {
			return fmt.Errorf("%w: window %d holds %d bytes of frames; PostgreSQL stores at most %d bytes in one value", ErrBadBatch, w.SCN, len(w.Frames), maxValue)
		}
		for j := range w.Rows {
			r := &w.Rows[j]
			if r.SCN != w.SCN {
				return fmt.Errorf("%w: row %d of window %d has scn %d, want the window's %d", ErrBadBatch, j, w.SCN, r.SCN, w.SCN)
			}
			switch r.Op {
			case store.RowUpsert:
				n, err := event.FrameLen(r.Frame)
				if err != nil || n != len(r.Frame) {
					return fmt.Errorf("%w: upsert %d of window %d does not carry exactly one frame (%d bytes, error %v)", ErrBadBatch, j, w.SCN, len(r.Frame), err)
				}
			case store.RowDelete, store.RowTruncate:
			default:
				return fmt.Errorf("%w: row %d of window %d has unknown op %d", ErrBadBatch, j, w.SCN, r.Op)
			}
		}
	}
	for _, sp := range b.Seeds {
		if sp.Rows > math.MaxInt64 {
			return fmt.Errorf("%w: seed of %s counts %d rows", ErrBadBatch, sp.Table, sp.Rows)
		}
	}
	return nil
}

func (s *Store) applyTx(ctx context.Context, tx pgx.Tx, b *store.Batch, defs [][]byte) error {
	var head, headTime, lw int64
	var empty bool
	if err := tx.QueryRow(ctx, s.q.lockMeta).Scan(&head, &headTime, &empty, &lw); err != nil {
		return err
	}
	if !empty && uint64(head) != b.After {
		return fmt.Errorf("%w (batch after scn %d, head is %d)", store.ErrConflict, b.After, head)
	}
	if empty {
		lw = int64(b.After)
	}

	if len(b.Windows) > 0 {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{s.schema, "log"}, []string{"scn", "ts", "frames"},
			pgx.CopyFromSlice(len(b.Windows), func(i int) ([]any, error) {
				w := &b.Windows[i]
				frames := w.Frames
				if frames == nil {
					frames = []byte{} // the column is NOT NULL; an empty window is still a window
				}
				return []any{int64(w.SCN), w.Timestamp, frames}, nil
			}))
		if err != nil {
			return fmt.Errorf("write log: %w", err)
		}
	}

	f := newFolder()
	for i := range b.Windows {
		w := &b.Windows[i]
		for j := range w.Rows {
			r := &w.Rows[j]
			if r.Op != store.RowTruncate {
				f.add(r, w.Timestamp)
				continue
			}
			// A truncate supersedes the rows of its source written before
			// it, and only those: write what is pending, then turn every
			// live row of the source into a tombstone.
			if err := s.flush(ctx, tx, f); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, s.q.truncate, int64(r.Source), int64(r.SCN), w.Timestamp); err != nil {
				return fmt.Errorf("truncate source %d in the snapshot: %w", r.Source, err)
			}
		}
	}
	if err := s.flush(ctx, tx, f); err != nil {
		return err
	}

	for i := range b.Schemas {
		t := &b.Schemas[i]
		if _, err := tx.Exec(ctx, s.q.insertSchema, int64(t.ID), int32(t.Version), defs[i]); err != nil {
			return fmt.Errorf("write schema %d version %d: %w", t.ID, t.Version, err)
		}
	}
	for _, sp := range b.Seeds {
		if _, err := tx.Exec(ctx, s.q.upsertSeed, sp.Table, sp.Run, sp.Cursor, int64(sp.Rows), sp.Done, toNanos(sp.Started), toNanos(sp.Updated)); err != nil {
			return fmt.Errorf("write seed progress of %s: %w", sp.Table, err)
		}
	}

	// A batch without windows keeps the head and its time.
	newHead := int64(b.After)
	if n := len(b.Windows); n > 0 {
		newHead, headTime = int64(b.Windows[n-1].SCN), b.Windows[n-1].Timestamp
	}
	if _, err := tx.Exec(ctx, s.q.updateMeta, newHead, headTime, lw, int64(len(b.Windows))); err != nil {
		return fmt.Errorf("write head: %w", err)
	}
	return nil
}

// folder folds a run of snapshot changes into the last change per key, in
// the columns upsertRows takes. Folding first matters twice: ON CONFLICT DO
// UPDATE refuses to touch one row twice in a statement, and a hot key
// changed in every window of a batch is written once.
type folder struct {
	index map[rowKey]int // position of the key's change in the columns

	sources  []int64
	keys     [][]byte
	scns     []int64
	ts       []int64
	deleted  []bool
	ikeys    []pgtype.Int8
	modhashs []pgtype.Int8
	frames   [][]byte
}

type rowKey struct {
	source uint32
	key    string
}

func newFolder() *folder { return &folder{index: make(map[rowKey]int)} }

func (f *folder) len() int { return len(f.sources) }

// add records r (an upsert or a delete) as its key's newest change.
func (f *folder) add(r *store.Row, ts int64) {
	del := r.Op == store.RowDelete
	var frame []byte
	if !del {
		frame = r.Frame
	}
	k := rowKey{r.Source, string(r.Key)}
	if i, ok := f.index[k]; ok {
		f.scns[i], f.ts[i], f.deleted[i], f.frames[i] = int64(r.SCN), ts, del, frame
		return
	}
	f.index[k] = len(f.sources)
	ikey, hasInt, mod, hasMod := store.KeyColumns(r.Key)
	key := r.Key
	if key == nil {
		key = []byte{} // the column is NOT NULL; nil would be sent as NULL
	}
	f.sources = append(f.sources, int64(r.Source))
	f.keys = append(f.keys, key)
	f.scns = append(f.scns, int64(r.SCN))
	f.ts = append(f.ts, ts)
	f.deleted = append(f.deleted, del)
	f.ikeys = append(f.ikeys, pgtype.Int8{Int64: ikey, Valid: hasInt})
	f.modhashs = append(f.modhashs, pgtype.Int8{Int64: mod, Valid: hasMod})
	f.frames = append(f.frames, frame)
}

func (f *folder) reset() {
	clear(f.index)
	f.sources, f.keys, f.scns, f.ts = f.sources[:0], f.keys[:0], f.scns[:0], f.ts[:0]
	f.deleted, f.ikeys, f.modhashs, f.frames = f.deleted[:0], f.ikeys[:0], f.modhashs[:0], f.frames[:0]
}

// flushBytes bounds the frame bytes of one upsert statement: its bytea[]
// parameter must stay far below PostgreSQL's 1 GiB limit on one value, and
// the server holds the arrays in memory while it runs. A variable so that
// tests can make it small.
var flushBytes = 32 << 20

// flush writes the folded changes into the snapshot and empties f. The
// changes are of distinct keys, so splitting them over statements does not
// change the result.
func (s *Store) flush(ctx context.Context, tx pgx.Tx, f *folder) error {
	for i := 0; i < f.len(); {
		j, size := i, 0
		for j < f.len() {
			n := len(f.frames[j]) + len(f.keys[j])
			if j > i && size+n > flushBytes {
				break
			}
			size += n
			j++
		}
		_, err := tx.Exec(ctx, s.q.upsertRows, f.sources[i:j], f.keys[i:j], f.scns[i:j], f.ts[i:j], f.deleted[i:j], f.ikeys[i:j], f.modhashs[i:j], f.frames[i:j])
		if err != nil {
			return fmt.Errorf("write %d snapshot rows: %w", j-i, err)
		}
		i = j
	}
	f.reset()
	return nil
}
