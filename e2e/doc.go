// Package e2e holds end-to-end tests: a real database, a real relay (in
// process, or as a `databus relay` subprocess for crash tests) and real
// clients over loopback HTTP. Every test that streams ends by comparing what
// the consumer materialised with what the database holds.
package e2e
