package kinesissink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/internal/awstest"
	"github.com/shardflow/shardflow/shardflowtest"
	kinesissink "github.com/shardflow/shardflow/sink/kinesis"
)

func TestEmulatorSinkAndProducerFromAnAWSConfig(t *testing.T) {
	t.Parallel()
	client := awstest.KinesisClient(t)
	out := awstest.CreateStream(t, client, 2)
	cfg := aws.Config{
		Region:       awstest.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("x", "x", ""),
		BaseEndpoint: aws.String(awstest.KinesisEndpoint(t)),
	}
	s, err := kinesissink.NewFromConfig(cfg, out, func(o *kinesissink.Options) { o.Ordered = true })
	if err != nil {
		t.Fatal(err)
	}
	p, err := kinesissink.NewProducerFromConfig(cfg, out, func(o *kinesissink.Options) { o.Aggregate = true })
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string]string)
	results := make(chan kinesissink.Result, 10)
	var data []string
	for i := range 10 {
		sd, pd := fmt.Sprintf("sink-%d", i), fmt.Sprintf("producer-%d", i)
		want[sd], want[pd] = "k", "k"
		data = append(data, sd)
		if err := p.PutEntry(t.Context(), kinesissink.Entry{Data: []byte(pd), PartitionKey: "k"}, func(r kinesissink.Result) { results <- r }); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	src := shardflowtest.NewSource[shardflow.Record]("in")
	src.AddShard("shard-a", shardflowtest.Records("in", "shard-a", data...)...)
	toEntry := kinesissink.ToEntry(func(_ context.Context, r shardflow.Record) ([]byte, error) { return r.Data, nil }, kinesissink.FixedKey[shardflow.Record]("k"))
	if err := shardflow.Source(src).Map(toEntry).Sink(s).Run(ctx); err != nil {
		t.Fatalf("pipeline into a sink made by NewFromConfig: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r := <-results; r.Err != nil {
			t.Errorf("producer record %q: %v", r.Entry.Data, r.Err)
		}
	}
	checkOnce(t, userRecords(t, readStream(t, client, out)), want)
}
