// Package event defines databus's unit of change and its binary wire format.
//
// An [Event] is one row change (or a marker) tagged with the SCN of the
// source transaction it belongs to. The events of one committed source
// transaction form a window; a frame of kind [KindEndOfWindow] closes it.
// Frames of kind [KindSchemaChange] announce a new schema version of a
// logical source; they travel inside a window, before the first event that
// uses the new version.
//
// # Frame layout (format version 1)
//
// All integers are big-endian. One frame:
//
//	offset size field
//	0      1    format version (1)
//	1      1    kind (1 data, 2 end of window, 3 schema change)
//	2      1    op (1 insert, 2 update, 3 delete; 0 for markers)
//	3      1    flags (bit 0: the before-image is present)
//	4      4    total frame length, header and trailer included
//	8      8    SCN
//	16     8    commit timestamp, nanoseconds since the Unix epoch
//	24     4    logical source id
//	28     2    schema version
//	30     2    reserved, zero
//	32     4    key length K
//	36     4    payload length P
//	40     4    before-image length B
//	44     4    CRC-32C (Castagnoli) of bytes 0..43
//	48     K    key (see [AppendKeyInt] and friends)
//	48+K   P    payload: Avro binary of the row image
//	48+K+P B    before-image: Avro binary, same schema as the payload
//	48+K+P+B 4  CRC-32C of the K+P+B body bytes
//
// The header checksum lets a reader reject a corrupt length before it trusts
// it; the body checksum covers everything else. A reader that meets a format
// version it does not know stops with [ErrVersion] rather than guessing.
//
// Payload meaning by operation: insert and update carry the new row in the
// payload; update and delete carry the old row in the before-image when the
// source provides it. A delete without a before-image carries only its key.
//
// End-of-window frames carry, in the payload, the number of data events of
// the whole window at the source (4 bytes) followed by the source's
// transaction id (a GTID for MySQL/MariaDB), possibly empty. Their source id
// is 0. Schema-change frames carry a JSON [SchemaChange] in the payload.
//
// The decoder never panics on arbitrary input (see the fuzz target); byte
// slices of a decoded event alias the input buffer.
package event
