package mysql

import (
	"encoding/binary"
	"fmt"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// tableVersion is a table definition read from the log, with its logical
// source id and schema version. Immutable.
type tableVersion struct {
	def    *tableDef
	table  schema.Table
	change event.SchemaChange
}

func (tv *tableVersion) appendRow(dst []byte, row []any) ([]byte, error) {
	cols := tv.def.cols
	if len(row) != len(cols) {
		return nil, fmt.Errorf("%w: row of %s has %d values for %d columns", ErrDecode, tv.table.Name, len(row), len(cols))
	}
	var err error
	for i := range cols {
		if dst, err = cols[i].appendValue(dst, row[i]); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

func (tv *tableVersion) appendKey(dst []byte, row []any) ([]byte, error) {
	cols := tv.def.cols
	if len(row) != len(cols) {
		return nil, fmt.Errorf("%w: row of %s has %d values for %d columns", ErrDecode, tv.table.Name, len(row), len(cols))
	}
	var err error
	for _, k := range tv.def.key {
		if dst, err = cols[k].appendKey(dst, row[k]); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// tableCache resolves table-map events to table versions. A definition is
// decoded once; later table maps of the same definition are found by their
// fingerprint (the table map's bytes that describe the definition). Used by
// the capture goroutine only.
type tableCache struct {
	colls  collationSet
	flavor string
	filter *filter
	store  *schemaStore

	captured map[string]bool // db "\x00" table → captured
	byFP     map[string]*tableVersion
	lastTM   tableMap // one-entry cache: the rows events of one statement share their table map
	lastTV   *tableVersion
	buf      []byte
}

func newTableCache(colls collationSet, flavor string, f *filter, store *schemaStore) *tableCache {
	return &tableCache{colls: colls, flavor: flavor, filter: f, store: store, captured: map[string]bool{}, byFP: map[string]*tableVersion{}}
}

// resolve returns the version of the table a table map describes, or nil
// when the table is not captured.
func (tc *tableCache) resolve(tm tableMap) (*tableVersion, error) {
	if tm == nil {
		return nil, fmt.Errorf("%w: rows event without its table map", ErrDecode)
	}
	if tm == tc.lastTM {
		return tc.lastTV, nil
	}
	b := append(tc.buf[:0], tm.Schema...)
	b = append(b, 0)
	b = append(b, tm.Table...)
	captured, ok := tc.captured[string(b)]
	if !ok {
		captured = tc.filter.match(string(tm.Schema), string(tm.Table))
		tc.captured[string(b)] = captured
	}
	if !captured {
		tc.buf = b
		tc.lastTM, tc.lastTV = tm, nil
		return nil, nil
	}
	b = fingerprint(b, tm)
	tc.buf = b
	tv := tc.byFP[string(b)]
	if tv == nil {
		def, err := tableDefFromMap(tm, tc.colls, tc.flavor)
		if err != nil {
			return nil, err
		}
		t, err := tc.store.resolve(def.schemaTable())
		if err != nil {
			return nil, err
		}
		tv = &tableVersion{def: def, table: t, change: schema.ChangeOf(t)}
		tc.byFP[string(b)] = tv
	}
	tc.lastTM, tc.lastTV = tm, tv
	return tv, nil
}

// fingerprint appends every part of a table map that describes the
// table's definition (not its table id, which changes with the table cache).
func fingerprint(b []byte, tm tableMap) []byte {
	bytes := func(p []byte) { b = binary.AppendUvarint(b, uint64(len(p))); b = append(b, p...) }
	ints := func(p []uint64) {
		b = binary.AppendUvarint(b, uint64(len(p)))
		for _, v := range p {
			b = binary.AppendUvarint(b, v)
		}
	}
	strs := func(p [][]byte) {
		b = binary.AppendUvarint(b, uint64(len(p)))
		for _, s := range p {
			bytes(s)
		}
	}
	bytes(tm.ColumnType)
	b = binary.AppendUvarint(b, uint64(len(tm.ColumnMeta)))
	for _, m := range tm.ColumnMeta {
		b = binary.LittleEndian.AppendUint16(b, m)
	}
	bytes(tm.NullBitmap)
	bytes(tm.SignednessBitmap)
	ints(tm.DefaultCharset)
	ints(tm.ColumnCharset)
	strs(tm.ColumnName)
	b = binary.AppendUvarint(b, uint64(len(tm.SetStrValue)))
	for _, s := range tm.SetStrValue {
		strs(s)
	}
	b = binary.AppendUvarint(b, uint64(len(tm.EnumStrValue)))
	for _, s := range tm.EnumStrValue {
		strs(s)
	}
	ints(tm.GeometryType)
	ints(tm.PrimaryKey)
	ints(tm.PrimaryKeyPrefix)
	ints(tm.EnumSetDefaultCharset)
	ints(tm.EnumSetColumnCharset)
	bytes(tm.VisibilityBitmap)
	return b
}
