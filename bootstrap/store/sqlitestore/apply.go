package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
)

// ErrBadBatch is wrapped by Apply's error when the batch breaks the
// contract of store.Batch (SCN order, rows that do not match their
// frames); nothing of it is applied.
var ErrBadBatch = errors.New("databus: bad bootstrap batch")

// validate checks b before any write, so that a bad batch changes nothing
// and never takes the write lock.
func validate(b *store.Batch) error {
	if b.After > math.MaxInt64 {
		return fmt.Errorf("%w: After %d is above %d, the largest SCN an SQLite store holds", ErrBadBatch, b.After, int64(math.MaxInt64))
	}
	prev := b.After
	for i := range b.Windows {
		w := &b.Windows[i]
		if w.SCN <= prev {
			return fmt.Errorf("%w: window %d has scn %d, not above %d (windows must be in strictly increasing SCN order after After)", ErrBadBatch, i, w.SCN, prev)
		}
		if w.SCN > math.MaxInt64 {
			return fmt.Errorf("%w: window scn %d is above %d, the largest SCN an SQLite store holds", ErrBadBatch, w.SCN, int64(math.MaxInt64))
		}
		prev = w.SCN
		for j := range w.Rows {
			if err := validateRow(&w.Rows[j], w.SCN); err != nil {
				return fmt.Errorf("%w: window %d row %d: %v", ErrBadBatch, w.SCN, j, err)
			}
		}
	}
	for _, sp := range b.Seeds {
		if sp.Table == "" {
			return fmt.Errorf("%w: a seed record without a table", ErrBadBatch)
		}
		if sp.Rows > math.MaxInt64 {
			return fmt.Errorf("%w: seed %s: %d rows", ErrBadBatch, sp.Table, sp.Rows)
		}
	}
	return nil
}

// validateRow checks that an upsert's frame is the whole insert frame of
// the row it claims to be: Snapshot serves the frame and takes its cursor
// from the frame's header, so the two must never disagree.
func validateRow(r *store.Row, scn uint64) error {
	if r.SCN != scn {
		return fmt.Errorf("row scn %d in window %d", r.SCN, scn)
	}
	switch r.Op {
	case store.RowUpsert:
		n, err := event.FrameLen(r.Frame)
		if err != nil {
			return fmt.Errorf("upsert frame: %v", err)
		}
		if n != len(r.Frame) {
			return fmt.Errorf("upsert frame of %d bytes holds a frame of %d", len(r.Frame), n)
		}
		h, _ := event.PeekHeader(r.Frame)
		switch {
		case h.Kind != event.KindData || event.Op(r.Frame[2]) != event.OpInsert || r.Frame[3] != 0:
			return fmt.Errorf("upsert frame is %v/%v (flags %#x), want a data insert without before-image", h.Kind, event.Op(r.Frame[2]), r.Frame[3])
		case h.Source != r.Source || !bytes.Equal(h.Key, r.Key):
			return fmt.Errorf("upsert frame of source %d key %x for row of source %d key %x", h.Source, h.Key, r.Source, r.Key)
		case h.SCN != r.SCN:
			return fmt.Errorf("upsert frame at scn %d for a row at scn %d", h.SCN, r.SCN)
		}
	case store.RowDelete, store.RowTruncate:
	default:
		return fmt.Errorf("unknown row op %d", r.Op)
	}
	return nil
}

// Apply implements store.Store: one write transaction holds the head
// check, the log entries, the folded snapshot changes, the schemas, the
// seeds and the new head. It fails with an error wrapping ErrBadBatch for
// a batch that breaks store.Batch's rules, and with store.ErrConflict when
// b.After is not the head; both change nothing.
func (s *Store) Apply(ctx context.Context, b *store.Batch) error {
	if err := validate(b); err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.writeErr("apply", err)
	}
	defer tx.Rollback()
	var head, lw, windows int64
	var empty bool
	if err := tx.QueryRowContext(ctx, "SELECT head, low_watermark, empty, windows FROM meta WHERE id = 1").Scan(&head, &lw, &empty, &windows); err != nil {
		return s.writeErr("apply", err)
	}
	if empty {
		head, lw = int64(b.After), int64(b.After)
	} else if uint64(head) != b.After {
		return fmt.Errorf("%w (batch after scn %d, head is %d)", store.ErrConflict, b.After, head)
	}
	var headTime sql.NullInt64 // unchanged by a batch without windows
	if len(b.Windows) > 0 {
		if err := s.applyWindows(ctx, tx, b.Windows); err != nil {
			return s.writeErr("apply", err)
		}
		last := b.Windows[len(b.Windows)-1]
		head, headTime = int64(last.SCN), sql.NullInt64{Int64: last.Timestamp, Valid: true}
		windows += int64(len(b.Windows))
	}
	if len(b.Schemas) > 0 {
		stmt, err := tx.PrepareContext(ctx, "INSERT INTO schemas (source, version, def) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
		if err != nil {
			return s.writeErr("apply", err)
		}
		for _, t := range b.Schemas {
			def, err := json.Marshal(t)
			if err != nil {
				return fmt.Errorf("databus: sqlitestore: schema %d v%d: %w", t.ID, t.Version, err)
			}
			if _, err := stmt.ExecContext(ctx, int64(t.ID), int64(t.Version), string(def)); err != nil {
				return s.writeErr("apply schemas", err)
			}
		}
	}
	for _, sp := range b.Seeds {
		if _, err := tx.ExecContext(ctx, `INSERT INTO seeds (tbl, run, cursor, rows, done, started, updated) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tbl) DO UPDATE SET run = excluded.run, cursor = excluded.cursor, rows = excluded.rows, done = excluded.done, started = excluded.started, updated = excluded.updated`,
			sp.Table, sp.Run, sp.Cursor, int64(sp.Rows), sp.Done, timeValue(sp.Started), timeValue(sp.Updated)); err != nil {
			return s.writeErr("apply seeds", err)
		}
	}
	if _, err := tx.ExecContext(ctx, "UPDATE meta SET head = ?, head_time = coalesce(?, head_time), low_watermark = ?, empty = 0, windows = ? WHERE id = 1",
		head, headTime, lw, windows); err != nil {
		return s.writeErr("apply", err)
	}
	if err := tx.Commit(); err != nil {
		return s.writeErr("apply commit", err)
	}
	return nil
}

// pending is the folded newest change of one key, not yet written.
type pending struct {
	source  uint32
	key     []byte
	scn     uint64
	ts      int64
	deleted bool
	frame   []byte
}

// folder folds a batch's row changes so that each key is written once:
// the last change of a key wins, and a truncate flushes what precedes it
// before it turns the source's live rows into tombstones, so that rows
// changed after it in the batch stay.
type folder struct {
	tx       *sql.Tx
	idx      map[string]int // source and key -> index in rows
	rows     []pending
	upserts  *multiInsert
	deletes  *multiInsert
	truncate *sql.Stmt
	keyBuf   []byte
}

// chunkRows is the number of rows one multi-row INSERT writes: one
// statement per row spends most of its time outside SQLite.
const chunkRows = 128

// multiInsert writes rows with multi-row INSERT statements of up to
// chunkRows rows, prepared once per size.
type multiInsert struct {
	tx    *sql.Tx
	head  string // INSERT INTO ... VALUES
	row   string // one row's placeholders
	tail  string // ON CONFLICT ...
	stmts map[int]*sql.Stmt
	args  []any
	n     int
}

func newMultiInsert(tx *sql.Tx, head, row, tail string) *multiInsert {
	return &multiInsert{tx: tx, head: head, row: row, tail: tail, stmts: map[int]*sql.Stmt{}}
}

// add queues one row (its values already appended to m.args).
func (m *multiInsert) add(ctx context.Context) error {
	m.n++
	if m.n == chunkRows {
		return m.flush(ctx)
	}
	return nil
}

func (m *multiInsert) flush(ctx context.Context) error {
	if m.n == 0 {
		return nil
	}
	st, ok := m.stmts[m.n]
	if !ok {
		var sb strings.Builder
		sb.WriteString(m.head)
		for i := range m.n {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(m.row)
		}
		sb.WriteString(m.tail)
		var err error
		if st, err = m.tx.PrepareContext(ctx, sb.String()); err != nil {
			return err
		}
		m.stmts[m.n] = st
	}
	_, err := st.ExecContext(ctx, m.args...)
	clear(m.args) // drop the references to the batch's bytes
	m.args, m.n = m.args[:0], 0
	return err
}

func (m *multiInsert) close() {
	for _, st := range m.stmts {
		st.Close()
	}
}

func (s *Store) applyWindows(ctx context.Context, tx *sql.Tx, ws []store.Window) error {
	logs := newMultiInsert(tx, "INSERT INTO log (scn, ts, frames) VALUES ", "(?,?,?)", "")
	defer logs.close()
	for i := range ws {
		logs.args = append(logs.args, int64(ws[i].SCN), ws[i].Timestamp, ws[i].Frames)
		if err := logs.add(ctx); err != nil {
			return fmt.Errorf("log: %w", err)
		}
	}
	if err := logs.flush(ctx); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	f := &folder{tx: tx, idx: map[string]int{},
		upserts: newMultiInsert(tx, "INSERT INTO snapshot (source, key, scn, deleted, ts, ikey, modhash, frame) VALUES ", "(?,?,?,0,NULL,?,?,?)",
			" ON CONFLICT (source, key) DO UPDATE SET scn = excluded.scn, deleted = 0, ts = NULL, ikey = excluded.ikey, modhash = excluded.modhash, frame = excluded.frame"),
		deletes: newMultiInsert(tx, "INSERT INTO snapshot (source, key, scn, deleted, ts, ikey, modhash, frame) VALUES ", "(?,?,?,1,?,NULL,NULL,NULL)",
			" ON CONFLICT (source, key) DO UPDATE SET scn = excluded.scn, deleted = 1, ts = excluded.ts, ikey = NULL, modhash = NULL, frame = NULL"),
	}
	defer f.close()
	for i := range ws {
		w := &ws[i]
		for j := range w.Rows {
			r := &w.Rows[j]
			switch r.Op {
			case store.RowUpsert:
				f.add(pending{source: r.Source, key: r.Key, scn: r.SCN, frame: r.Frame})
			case store.RowDelete:
				f.add(pending{source: r.Source, key: r.Key, scn: r.SCN, ts: w.Timestamp, deleted: true})
			case store.RowTruncate:
				if err := f.flush(ctx); err != nil {
					return err
				}
				if err := f.truncateSource(ctx, r.Source, r.SCN, w.Timestamp); err != nil {
					return err
				}
			}
		}
	}
	return f.flush(ctx)
}

func (f *folder) add(p pending) {
	if p.key == nil {
		p.key = []byte{} // the key column is a NOT NULL blob
	}
	f.keyBuf = binary.BigEndian.AppendUint32(f.keyBuf[:0], p.source)
	f.keyBuf = append(f.keyBuf, p.key...)
	if i, ok := f.idx[string(f.keyBuf)]; ok {
		f.rows[i] = p
		return
	}
	f.idx[string(f.keyBuf)] = len(f.rows)
	f.rows = append(f.rows, p)
}

// flush writes the pending changes in (source, key) order, which keeps the
// B-tree writes local. Each key is pending once, so the order between
// upserts and deletes does not matter.
func (f *folder) flush(ctx context.Context) error {
	if len(f.rows) == 0 {
		return nil
	}
	slices.SortFunc(f.rows, func(a, b pending) int {
		if a.source != b.source {
			if a.source < b.source {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.key, b.key)
	})
	for i := range f.rows {
		p := &f.rows[i]
		if p.deleted {
			f.deletes.args = append(f.deletes.args, int64(p.source), p.key, int64(p.scn), p.ts)
			if err := f.deletes.add(ctx); err != nil {
				return fmt.Errorf("snapshot delete: %w", err)
			}
			continue
		}
		ik, hasInt, mh, hasMod := store.KeyColumns(p.key)
		var ikv, mhv any
		if hasInt {
			ikv = ik
		}
		if hasMod {
			mhv = mh
		}
		f.upserts.args = append(f.upserts.args, int64(p.source), p.key, int64(p.scn), ikv, mhv, p.frame)
		if err := f.upserts.add(ctx); err != nil {
			return fmt.Errorf("snapshot upsert: %w", err)
		}
	}
	if err := f.upserts.flush(ctx); err != nil {
		return fmt.Errorf("snapshot upsert: %w", err)
	}
	if err := f.deletes.flush(ctx); err != nil {
		return fmt.Errorf("snapshot delete: %w", err)
	}
	f.rows = f.rows[:0]
	clear(f.idx)
	return nil
}

func (f *folder) truncateSource(ctx context.Context, source uint32, scn uint64, ts int64) error {
	var err error
	if f.truncate == nil {
		if f.truncate, err = f.tx.PrepareContext(ctx, "UPDATE snapshot SET deleted = 1, scn = ?, ts = ?, ikey = NULL, modhash = NULL, frame = NULL WHERE source = ? AND deleted = 0"); err != nil {
			return err
		}
	}
	if _, err := f.truncate.ExecContext(ctx, int64(scn), ts, int64(source)); err != nil {
		return fmt.Errorf("snapshot truncate of source %d: %w", source, err)
	}
	return nil
}

func (f *folder) close() {
	f.upserts.close()
	f.deletes.close()
	if f.truncate != nil {
		f.truncate.Close()
	}
}

// timeValue stores a time as ns since the epoch, and the zero time as NULL
// (its UnixNano is not defined).
func timeValue(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// Purge implements store.Store. In one write transaction it deletes the
// longest run of oldest windows committed before p.LogBefore, stopping at
// the first window that is not (commit times need not rise with SCNs, and
// the log must never have a gap) and before the head window; then every
// tombstone whose window was committed before p.TombstonesBefore.
func (s *Store) Purge(ctx context.Context, p store.PurgePolicy) (store.PurgeResult, error) {
	var res store.PurgeResult
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return res, s.writeErr("purge", err)
	}
	defer tx.Rollback()
	var head, lw, windows int64
	var empty bool
	if err := tx.QueryRowContext(ctx, "SELECT head, low_watermark, empty, windows FROM meta WHERE id = 1").Scan(&head, &lw, &empty, &windows); err != nil {
		return res, s.writeErr("purge", err)
	}
	if !p.LogBefore.IsZero() && !empty {
		// The first window to keep: the oldest one not before LogBefore,
		// or the head.
		keep := head
		var first sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT scn FROM log WHERE ts >= ? ORDER BY scn LIMIT 1", p.LogBefore.UnixNano()).Scan(&first); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return res, s.writeErr("purge", err)
		}
		if first.Valid && first.Int64 < keep {
			keep = first.Int64
		}
		var newLW sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT max(scn) FROM log WHERE scn < ?", keep).Scan(&newLW); err != nil {
			return res, s.writeErr("purge", err)
		}
		if newLW.Valid {
			r, err := tx.ExecContext(ctx, "DELETE FROM log WHERE scn <= ?", newLW.Int64)
			if err != nil {
				return res, s.writeErr("purge log", err)
			}
			n, _ := r.RowsAffected()
			res.Windows = uint64(n)
			lw = newLW.Int64
			windows -= n
		}
	}
	if !p.TombstonesBefore.IsZero() {
		r, err := tx.ExecContext(ctx, "DELETE FROM snapshot WHERE deleted = 1 AND ts < ?", p.TombstonesBefore.UnixNano())
		if err != nil {
			return res, s.writeErr("purge tombstones", err)
		}
		n, _ := r.RowsAffected()
		res.Tombstones = uint64(n)
	}
	res.LowWatermark = uint64(lw)
	if res.Windows == 0 && res.Tombstones == 0 {
		return res, nil
	}
	if _, err := tx.ExecContext(ctx, "UPDATE meta SET low_watermark = ?, windows = ? WHERE id = 1", lw, windows); err != nil {
		return res, s.writeErr("purge", err)
	}
	if err := tx.Commit(); err != nil {
		return res, s.writeErr("purge commit", err)
	}
	return res, nil
}

func (s *Store) writeErr(what string, err error) error {
	if errors.Is(err, store.ErrConflict) {
		return err
	}
	return s.readErr(what, err)
}
