package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

func cmdPut(ctx context.Context, args []string, stdin io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("put", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var a awsFlags
	a.register(fs)
	stream := fs.String("stream", "", "stream to write (name or ARN)")
	key := fs.String("partition-key", "", "partition key of every record (default: a random key per record)")
	ordered := fs.Bool("ordered", false, "keep the order of records with the same partition key")
	aggregate := fs.Bool("aggregate", false, "pack records into KPL aggregated records")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: shardflow put --stream S [flags] [FILE...]\n\nWrites each line of the files (default: stdin) as a record.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stream == "" {
		return usagef("--stream is required")
	}
	kc, err := a.kinesis(ctx)
	if err != nil {
		return err
	}
	p, err := kinesissink.NewProducer(kc, *stream, func(o *kinesissink.Options) {
		o.Ordered = *ordered
		o.Aggregate = *aggregate
	})
	if err != nil {
		return err
	}
	var written, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	onResult := func(r kinesissink.Result) {
		if r.Err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &r.Err)
			return
		}
		written.Add(1)
	}
	progress := startProgress(ctx, stderr, "put", &written)
	defer progress()

	inputs := []io.Reader{stdin}
	if fs.NArg() > 0 {
		inputs = nil
		for _, name := range fs.Args() {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			inputs = append(inputs, f)
		}
	}
	lines := 0
	for _, in := range inputs {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64*1024), 10<<20+1)
		for sc.Scan() {
			k := *key
			if k == "" {
				k = randomKey()
			}
			if err := p.PutEntry(ctx, kinesissink.Entry{Data: append([]byte(nil), sc.Bytes()...), PartitionKey: k}, onResult); err != nil {
				var ve *kinesissink.ValidationError
				if errors.As(err, &ve) {
					fmt.Fprintf(stderr, "line %d not sent: %v\n", lines+1, err)
					failed.Add(1)
					lines++
					continue
				}
				_ = p.Close(context.WithoutCancel(ctx))
				return err
			}
			lines++
		}
		if err := sc.Err(); err != nil {
			_ = p.Close(context.WithoutCancel(ctx))
			return fmt.Errorf("read input: %w", err)
		}
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	closeErr := p.Close(closeCtx)
	progress()
	fmt.Fprintf(stderr, "put %d lines: %d records written, %d failed\n", lines, written.Load(), failed.Load())
	if e := firstErr.Load(); e != nil {
		return fmt.Errorf("%d records failed, the first with: %w", failed.Load(), *e)
	}
	if failed.Load() > 0 {
		return fmt.Errorf("%d records failed", failed.Load())
	}
	return closeErr
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
