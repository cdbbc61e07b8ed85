package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

const putDoc = `Writes each line of the files (default: stdin) as a record, through the batching
producer, and exits non-zero if any record was not written.

SIGINT or SIGTERM stops reading the input; the records already taken are sent within
--shutdown-timeout, and those still unwritten then are counted as not written (exit
status 1). A second signal exits at once.`

func cmdPut(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("put", "put --stream S [flags] [FILE...]", putDoc)
	var a awsFlags
	a.register(fs.FlagSet, true, false)
	stream := fs.String("stream", "", "stream to write (name or ARN)")
	key := fs.String("partition-key", "", "partition key of every record (default: a random key per record)")
	ordered := fs.Bool("ordered", false, "keep the order of records with the same partition key through retries")
	aggregate := fs.Bool("aggregate", false, "pack records into KPL aggregated records")
	timeout := registerShutdownTimeout(fs)
	logger := registerLogLevel(fs, stderr)
	files, err := fs.parse(args, stdout)
	if err != nil {
		return err
	}
	if *stream == "" {
		return usagef("--stream is required")
	}
	if err := checkShutdownTimeout(*timeout); err != nil {
		return err
	}
	inputs := []io.Reader{stdin}
	if len(files) > 0 {
		inputs = nil
		for _, name := range files {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			inputs = append(inputs, f)
		}
	}
	log := logger()
	a.health.log = log
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	p, err := kinesissink.NewProducer(kc, *stream, func(o *kinesissink.Options) {
		o.Ordered = *ordered
		o.Aggregate = *aggregate
		o.Logger = log
	})
	if err != nil {
		return err
	}
	var c putCounts
	progress := startProgress(ctx, stderr, "put", &c.written)
	defer progress()
	err = runBounded(ctx, *timeout, func() error { return putLines(ctx, p, inputs, *key, *timeout, &c, stderr) })
	progress()
	notWritten := c.failed.Load() + c.accepted.Load() - c.written.Load() - c.reported.Load()
	fmt.Fprintf(stderr, "put %d lines: %d records written, %d failed\n", c.lines.Load(), c.written.Load(), notWritten)
	switch {
	case notWritten > 0 && c.firstErr.Load() != nil:
		return errors.Join(fmt.Errorf("%d records not written, the first with: %w", notWritten, *c.firstErr.Load()), err)
	case notWritten > 0:
		return errors.Join(fmt.Errorf("%d records not written", notWritten), err)
	case err == nil && ctx.Err() != nil:
		return fmt.Errorf("stopped before the end of the input: %w", context.Cause(ctx))
	}
	return err
}

// putCounts are the outcomes of put's lines.
type putCounts struct {
	lines    atomic.Int64 // read
	accepted atomic.Int64 // taken by the producer
	written  atomic.Int64 // reported written
	reported atomic.Int64 // taken and reported not written
	failed   atomic.Int64 // refused before sending, or reported not written
	firstErr atomic.Pointer[error]
}

func (c *putCounts) fail(err error) {
	c.failed.Add(1)
	c.firstErr.CompareAndSwap(nil, &err)
}

// putLines sends every line of inputs until they end or ctx ends, then
// closes p, bounded by the shutdown deadline.
func putLines(ctx context.Context, p *kinesissink.Producer, inputs []io.Reader, key string, timeout time.Duration, c *putCounts, stderr io.Writer) error {
	onResult := func(r kinesissink.Result) {
		if r.Err != nil {
			c.reported.Add(1)
			c.fail(r.Err)
			return
		}
		c.written.Add(1)
	}
	// Lines are read on their own goroutine, so that a signal stops put
	// even while it waits for input.
	lines := make(chan []byte, 64)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		for _, in := range inputs {
			sc := bufio.NewScanner(in)
			sc.Buffer(make([]byte, 64*1024), 10<<20+1)
			for sc.Scan() {
				select {
				case lines <- append([]byte(nil), sc.Bytes()...):
				case <-ctx.Done():
					return
				}
			}
			if err := sc.Err(); err != nil {
				readErr <- fmt.Errorf("read input: %w", err)
				return
			}
		}
	}()
	var err error
read:
	for {
		var line []byte
		var ok bool
		select {
		case <-ctx.Done():
			break read
		case line, ok = <-lines:
			if !ok {
				select {
				case err = <-readErr:
				default:
				}
				break read
			}
		}
		if ctx.Err() != nil {
			break // the line is not counted: it was read after the signal
		}
		n := c.lines.Add(1)
		k := key
		if k == "" {
			k = randomKey()
		}
		perr := p.PutEntry(ctx, kinesissink.Entry{Data: line, PartitionKey: k}, onResult)
		if ve, ok := errors.AsType[*kinesissink.ValidationError](perr); ok {
			fmt.Fprintf(stderr, "line %d not sent: %v\n", n, ve)
			c.fail(perr)
			continue
		}
		if perr != nil {
			if ctx.Err() == nil {
				err = perr
			}
			c.failed.Add(1) // the line was read, and not taken
			break
		}
		c.accepted.Add(1)
	}
	closeCtx, cancel := shutdownContext(ctx, timeout)
	defer cancel()
	// Close's error repeats what the callbacks counted.
	_ = p.Close(closeCtx)
	return err
}

func randomKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// startProgress prints the count and rate to stderr every 2 seconds while a
// long run goes on; the returned function stops it (idempotent).
func startProgress(ctx context.Context, stderr io.Writer, what string, n *atomic.Int64) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				el := time.Since(start)
				fmt.Fprintf(stderr, "%s: %d records in %v (%.0f/s)\n", what, n.Load(), el.Round(time.Second), float64(n.Load())/el.Seconds())
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
