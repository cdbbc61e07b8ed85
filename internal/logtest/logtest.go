// Package logtest is what shardflow's tests use to see what its components
// log: a buffer for a slog handler that many goroutines write to, and a
// handler that keeps each message with its component.
package logtest

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"
)

// Buffer is a bytes.Buffer safe for concurrent writes, for a slog handler
// written from many goroutines.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Capture is a slog.Handler that keeps the messages it is given, each as
// "<component>: <message>", component being the value of the "component"
// attribute. Copies share what was kept.
type Capture struct {
	mu    *sync.Mutex
	msgs  *[]string
	attrs []slog.Attr
}

// NewCapture returns an empty Capture.
func NewCapture() Capture { return Capture{mu: &sync.Mutex{}, msgs: new([]string)} }

func (c Capture) Enabled(context.Context, slog.Level) bool { return true }

func (c Capture) Handle(_ context.Context, r slog.Record) error {
	component := ""
	for _, a := range c.attrs {
		if a.Key == "component" {
			component = a.Value.String()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.msgs = append(*c.msgs, component+": "+r.Message)
	return nil
}

func (c Capture) WithAttrs(as []slog.Attr) slog.Handler {
	c.attrs = append(slices.Clone(c.attrs), as...)
	return c
}

func (c Capture) WithGroup(string) slog.Handler { return c }

// Has reports whether msg, as "<component>: <message>", was logged.
func (c Capture) Has(msg string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(*c.msgs, msg)
}

// Messages returns what was kept, in order.
func (c Capture) Messages() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(*c.msgs)
}
