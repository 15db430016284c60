package event

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
)

// FormatVersion is the version byte written into every frame.
const FormatVersion = 1

// HeaderSize is the fixed size of a frame header; TrailerSize that of the
// body checksum. A frame is HeaderSize+K+P+B+TrailerSize bytes.
const (
	HeaderSize  = 48
	TrailerSize = 4
)

// MaxFrameSize bounds one frame so that a corrupt length can never make a
// reader allocate without limit. A single row image larger than this is
// refused by the encoder.
const MaxFrameSize = 256 << 20

// Kind says what a frame is.
type Kind uint8

// Frame kinds.
const (
	KindData         Kind = 1
	KindEndOfWindow  Kind = 2
	KindSchemaChange Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindEndOfWindow:
		return "end_of_window"
	case KindSchemaChange:
		return "schema_change"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Op is the row operation of a data event.
type Op uint8

// Row operations.
const (
	OpInsert Op = 1
	OpUpdate Op = 2
	OpDelete Op = 3
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

const flagBefore = 1

// Event is one frame, decoded. For data events every field is meaningful;
// markers use the subset described in the package doc.
type Event struct {
	Kind          Kind
	Op            Op
	SCN           uint64
	Timestamp     int64 // commit time, ns since the Unix epoch
	Source        uint32
	SchemaVersion uint16
	Key           []byte
	Payload       []byte
	// Before is the before-image; HasBefore distinguishes an absent image
	// from an empty one.
	Before    []byte
	HasBefore bool
}

// Size returns the encoded size of e.
func (e *Event) Size() int {
	return HeaderSize + len(e.Key) + len(e.Payload) + len(e.Before) + TrailerSize
}

// Errors returned by the decoder. Every decoding error wraps ErrCorrupt
// except ErrShort, which only says that more bytes are needed.
var (
	ErrShort    = errors.New("databus: frame truncated")
	ErrCorrupt  = errors.New("databus: corrupt frame")
	ErrVersion  = fmt.Errorf("%w: unknown format version", ErrCorrupt)
	ErrChecksum = fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	ErrTooLarge = errors.New("databus: frame larger than MaxFrameSize")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendFrame appends the encoding of e to dst and returns the extended
// slice. It fails only when the frame would exceed MaxFrameSize.
func AppendFrame(dst []byte, e *Event) ([]byte, error) {
	n := e.Size()
	if n > MaxFrameSize {
		return dst, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	h := dst[start:]
	h[0] = FormatVersion
	h[1] = byte(e.Kind)
	h[2] = byte(e.Op)
	var flags byte
	if e.HasBefore {
		flags |= flagBefore
	}
	h[3] = flags
	binary.BigEndian.PutUint32(h[4:], uint32(n))
	binary.BigEndian.PutUint64(h[8:], e.SCN)
	binary.BigEndian.PutUint64(h[16:], uint64(e.Timestamp))
	binary.BigEndian.PutUint32(h[24:], e.Source)
	binary.BigEndian.PutUint16(h[28:], e.SchemaVersion)
	binary.BigEndian.PutUint32(h[32:], uint32(len(e.Key)))
	binary.BigEndian.PutUint32(h[36:], uint32(len(e.Payload)))
	binary.BigEndian.PutUint32(h[40:], uint32(len(e.Before)))
	binary.BigEndian.PutUint32(h[44:], crc32.Checksum(h[:44], castagnoli))
	body := len(dst)
	dst = append(dst, e.Key...)
	dst = append(dst, e.Payload...)
	dst = append(dst, e.Before...)
	sum := crc32.Checksum(dst[body:], castagnoli)
	return binary.BigEndian.AppendUint32(dst, sum), nil
}

// FrameLen validates the header at the start of b and returns the length of
// the whole frame. It returns ErrShort when b holds less than a header.
func FrameLen(b []byte) (int, error) {
	if len(b) < HeaderSize {
		return 0, ErrShort
	}
	if b[0] != FormatVersion {
		return 0, fmt.Errorf("%w %d", ErrVersion, b[0])
	}
	if crc32.Checksum(b[:44], castagnoli) != binary.BigEndian.Uint32(b[44:]) {
		return 0, fmt.Errorf("%w (header)", ErrChecksum)
	}
	if b[3]&^flagBefore != 0 || b[30] != 0 || b[31] != 0 {
		return 0, fmt.Errorf("%w: reserved bits set", ErrCorrupt)
	}
	n := uint64(binary.BigEndian.Uint32(b[4:]))
	k := uint64(binary.BigEndian.Uint32(b[32:]))
	p := uint64(binary.BigEndian.Uint32(b[36:]))
	bb := uint64(binary.BigEndian.Uint32(b[40:]))
	if n != HeaderSize+k+p+bb+TrailerSize || n > MaxFrameSize {
		return 0, fmt.Errorf("%w: inconsistent lengths", ErrCorrupt)
	}
	return int(n), nil
}

// Decode decodes the frame at the start of b. The returned event's byte
// slices alias b. n is the number of bytes consumed.
func Decode(b []byte) (e Event, n int, err error) {
	n, err = FrameLen(b)
	if err != nil {
		return Event{}, 0, err
	}
	if len(b) < n {
		return Event{}, 0, ErrShort
	}
	k := int(binary.BigEndian.Uint32(b[32:]))
	p := int(binary.BigEndian.Uint32(b[36:]))
	body := b[HeaderSize : n-TrailerSize]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[n-TrailerSize:]) {
		return Event{}, 0, fmt.Errorf("%w (body)", ErrChecksum)
	}
	e = Event{
		Kind:          Kind(b[1]),
		Op:            Op(b[2]),
		HasBefore:     b[3]&flagBefore != 0,
		SCN:           binary.BigEndian.Uint64(b[8:]),
		Timestamp:     int64(binary.BigEndian.Uint64(b[16:])),
		Source:        binary.BigEndian.Uint32(b[24:]),
		SchemaVersion: binary.BigEndian.Uint16(b[28:]),
		Key:           body[:k:k],
		Payload:       body[k : k+p : k+p],
		Before:        body[k+p:],
	}
	if err := e.validate(); err != nil {
		return Event{}, 0, err
	}
	return e, n, nil
}

func (e *Event) validate() error {
	switch e.Kind {
	case KindData:
		if e.Op < OpInsert || e.Op > OpDelete {
			return fmt.Errorf("%w: data event with %v", ErrCorrupt, e.Op)
		}
	case KindEndOfWindow:
		if len(e.Payload) < 4 {
			return fmt.Errorf("%w: end-of-window payload of %d bytes", ErrCorrupt, len(e.Payload))
		}
	case KindSchemaChange:
	default:
		return fmt.Errorf("%w: %v", ErrCorrupt, e.Kind)
	}
	if !e.HasBefore && len(e.Before) > 0 {
		return fmt.Errorf("%w: before-image without its flag", ErrCorrupt)
	}
	return nil
}

// Header is the part of a frame needed to route it without reading its body:
// what server-side filters look at.
type Header struct {
	Kind   Kind
	SCN    uint64
	Source uint32
	Key    []byte
}

// PeekHeader reads the routing fields of a frame that is already known to be
// valid (for example one held in the relay's buffer, which only holds frames
// it encoded itself). It does not verify checksums; b must hold the frame.
func PeekHeader(b []byte) (h Header, n int) {
	n = int(binary.BigEndian.Uint32(b[4:]))
	k := int(binary.BigEndian.Uint32(b[32:]))
	return Header{
		Kind:   Kind(b[1]),
		SCN:    binary.BigEndian.Uint64(b[8:]),
		Source: binary.BigEndian.Uint32(b[24:]),
		Key:    b[HeaderSize : HeaderSize+k : HeaderSize+k],
	}, n
}

// EndOfWindow builds the marker that closes a window of count data events.
func EndOfWindow(scn uint64, ts int64, count uint32, txid string) Event {
	p := make([]byte, 4, 4+len(txid))
	binary.BigEndian.PutUint32(p, count)
	return Event{Kind: KindEndOfWindow, SCN: scn, Timestamp: ts, Payload: append(p, txid...)}
}

// WindowInfo returns the count and transaction id an end-of-window marker
// carries. It returns ok=false for any other frame.
func (e *Event) WindowInfo() (count uint32, txid string, ok bool) {
	if e.Kind != KindEndOfWindow || len(e.Payload) < 4 {
		return 0, "", false
	}
	return binary.BigEndian.Uint32(e.Payload), string(e.Payload[4:]), true
}

// SchemaChange is the payload of a schema-change frame: the new version of a
// logical source's schema, as the relay's schema registry serves it.
type SchemaChange struct {
	Source  uint32          `json:"id"`
	Name    string          `json:"name"`
	Version uint16          `json:"version"`
	Key     []string        `json:"key"`
	Avro    json.RawMessage `json:"avro"`
	// Columns, when present, is the JSON of the table's columns as the
	// schema package defines them (schema.ChangeOf fills it); without it a
	// reader rebuilds the columns from the Avro record.
	Columns json.RawMessage `json:"columns,omitempty"`

	// DDL, when set, says which statement the frame stands for: "alter",
	// "rename", "truncate" or "drop". The version above is the one in force
	// after it.
	DDL string `json:"ddl,omitempty"`
	// Truncate: every row of the source was deleted at this point of the
	// window (TRUNCATE). The log carries no row events for it, so a
	// consumer must drop the rows it holds for this source here.
	Truncate bool `json:"truncate,omitempty"`
	// Drop: the table was dropped; its rows are gone.
	Drop bool `json:"drop,omitempty"`
	// RenamedFrom / RenamedTo name the other side of a rename.
	RenamedFrom string `json:"renamedFrom,omitempty"`
	RenamedTo   string `json:"renamedTo,omitempty"`
	// Cascade and RestartIdentity echo a PostgreSQL TRUNCATE's options.
	Cascade         bool `json:"cascade,omitempty"`
	RestartIdentity bool `json:"restartIdentity,omitempty"`
}

// NewSchemaChange builds a schema-change frame at scn.
func NewSchemaChange(scn uint64, ts int64, sc SchemaChange) (Event, error) {
	p, err := json.Marshal(sc)
	if err != nil {
		return Event{}, err
	}
	return Event{Kind: KindSchemaChange, SCN: scn, Timestamp: ts, Source: sc.Source, SchemaVersion: sc.Version, Payload: p}, nil
}

// SchemaChange decodes the payload of a schema-change frame.
func (e *Event) SchemaChange() (SchemaChange, error) {
	var sc SchemaChange
	if e.Kind != KindSchemaChange {
		return sc, fmt.Errorf("databus: %v frame is not a schema change", e.Kind)
	}
	if err := json.Unmarshal(e.Payload, &sc); err != nil {
		return sc, fmt.Errorf("%w: schema change: %v", ErrCorrupt, err)
	}
	return sc, nil
}
