// Command example uses the generated Go client of lakehouse.v1 (gen/go/lakehouse/v1) end to
// end: it creates a namespace and a table, appends rows exactly once with a writer id (and
// resends a request, as after a lost acknowledgement), reads the rows back, and reads the
// ErrorInfo reason of a refused call. It prints one line per step.
//
// docs/clients/go.md shows how to generate the client, build this program and run it;
// tests/client/test_go_client.py runs it against a real `lakehouse serve`.
//
//	example -addr localhost:50051 -key "$LAKEHOUSE_KEY"
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	lakehousev1 "lakehouse/gen/go/lakehouse/v1"
)

// The rows the program writes: the first request carries rows 0 and 1 (offset 0), the second
// row 2 (offset 2).
var rows = []map[string]interface{}{
	{"id": 1, "customer": "ada", "amount": 12.5},
	{"id": 2, "customer": "grace", "amount": 7.25},
	{"id": 3, "customer": "linus", "amount": 30.0},
}

func main() {
	addr := flag.String("addr", envOr("LAKEHOUSE_ADDR", "localhost:50051"), "the service's gRPC address (env LAKEHOUSE_ADDR)")
	key := flag.String("key", os.Getenv("LAKEHOUSE_KEY"), "an API key with the developer role, sent as 'authorization: Bearer <key>'; empty sends none (env LAKEHOUSE_KEY)")
	namespace := flag.String("namespace", "go_example", "the namespace to create (or use, when it exists)")
	table := flag.String("table", "orders", "the table to create (or use, when it exists)")
	writer := flag.String("writer", "go-example-1", "the writer id of the exactly-once appends")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, *addr, *key, *namespace, *table, *writer); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func run(ctx context.Context, addr, key, namespace, table, writer string) error {
	// Plaintext, as `lakehouse serve` listens by default; with TLS on, dial with
	// grpc.WithTransportCredentials(credentials.NewClientTLSFromFile(...)) instead.
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure())
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	tables := lakehousev1.NewTableServiceClient(conn)
	ingest := lakehousev1.NewIngestServiceClient(conn)

	// The API key goes with every call as `authorization: Bearer <key>` metadata.
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	if err := createNamespace(ctx, tables, namespace); err != nil {
		return err
	}
	if err := createTable(ctx, tables, namespace, table); err != nil {
		return err
	}
	if err := appendRows(ctx, ingest, namespace, table, writer); err != nil {
		return err
	}
	if err := readRows(ctx, tables, namespace, table); err != nil {
		return err
	}
	return showRefusal(ctx, tables, namespace)
}

func createNamespace(ctx context.Context, tables lakehousev1.TableServiceClient, namespace string) error {
	_, err := tables.CreateNamespace(ctx, &lakehousev1.CreateNamespaceRequest{Name: namespace})
	switch {
	case err == nil:
		fmt.Printf("created namespace %s\n", namespace)
	case status.Code(err) == codes.AlreadyExists:
		fmt.Printf("namespace %s exists already\n", namespace)
	default:
		return refused("CreateNamespace", err)
	}
	return nil
}

func createTable(ctx context.Context, tables lakehousev1.TableServiceClient, namespace, table string) error {
	column := func(name string, t lakehousev1.PrimitiveType, required bool) *lakehousev1.Field {
		return &lakehousev1.Field{
			Name:     name,
			Type:     &lakehousev1.DataType{Kind: &lakehousev1.DataType_Primitive{Primitive: t}},
			Required: required,
		}
	}
	_, err := tables.CreateTable(ctx, &lakehousev1.CreateTableRequest{
		Namespace: namespace,
		Table:     table,
		Schema: &lakehousev1.Schema{Fields: []*lakehousev1.Field{
			column("id", lakehousev1.PrimitiveType_PRIMITIVE_TYPE_LONG, true),
			column("customer", lakehousev1.PrimitiveType_PRIMITIVE_TYPE_STRING, false),
			column("amount", lakehousev1.PrimitiveType_PRIMITIVE_TYPE_DOUBLE, false),
		}},
	})
	switch {
	case err == nil:
		fmt.Printf("created table %s.%s\n", namespace, table)
	case status.Code(err) == codes.AlreadyExists:
		fmt.Printf("table %s.%s exists already\n", namespace, table)
	default:
		return refused("CreateTable", err)
	}
	return nil
}

// appendRows writes the rows over one AppendRows stream with a writer id, then resends the
// first request, as a client does when an acknowledgement was lost: the service answers
// already_written and writes nothing twice. Run again, the program writes nothing new either.
func appendRows(ctx context.Context, ingest lakehousev1.IngestServiceClient, namespace, table, writer string) error {
	stream, err := ingest.AppendRows(ctx)
	if err != nil {
		return refused("AppendRows", err)
	}
	requests := []*lakehousev1.AppendRowsRequest{
		// The first request names the table and the writer; offsets count the writer's rows.
		{Namespace: namespace, Table: table, WriterId: writer, Offset: offset(0), Rows: jsonRows(rows[:2])},
		{Offset: offset(2), Rows: jsonRows(rows[2:])},
		// The resend of the first request.
		{Offset: offset(0), Rows: jsonRows(rows[:2])},
	}
	for i, request := range requests {
		if err := stream.Send(request); err != nil {
			// The stream broke: Recv returns the call's status.
			_, err = stream.Recv()
			return refused("AppendRows", err)
		}
		// One acknowledgement a request, in order: wait for it, so the resend comes after
		// the first request was committed.
		ack, err := stream.Recv()
		if err != nil {
			return refused("AppendRows", err)
		}
		if ack.GetError() != nil {
			return fmt.Errorf("AppendRows request %d at offset %d failed: %s", i, ack.GetOffset(), ack.GetError().GetMessage())
		}
		result := ack.GetResult()
		if result.GetAlreadyWritten() {
			fmt.Printf("offset %d: already written, nothing written again\n", ack.GetOffset())
		} else {
			fmt.Printf("offset %d: wrote %d rows in snapshot %d\n", ack.GetOffset(), result.GetRowsWritten(), result.GetSnapshotId())
		}
	}
	if err := stream.CloseSend(); err != nil {
		return refused("AppendRows", err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		return refused("AppendRows", err)
	}
	for _, row := range rows {
		fmt.Printf("sent row %s\n", mustJSON(row))
	}
	return nil
}

func offset(n int64) *int64 { return &n }

func jsonRows(batch []map[string]interface{}) *lakehousev1.AppendRowsRequest_JsonRows {
	values := make([]*structpb.Struct, 0, len(batch))
	for _, row := range batch {
		value, err := structpb.NewStruct(row)
		if err != nil {
			panic(err) // the rows above are plain JSON values
		}
		values = append(values, value)
	}
	return &lakehousev1.AppendRowsRequest_JsonRows{JsonRows: &lakehousev1.JsonRows{Rows: values}}
}

// readRows reads the whole table back as JSON rows (ReadRows streams its answer).
func readRows(ctx context.Context, tables lakehousev1.TableServiceClient, namespace, table string) error {
	stream, err := tables.ReadRows(ctx, &lakehousev1.ReadRowsRequest{
		Namespace: namespace,
		Table:     table,
		Format:    lakehousev1.RowFormat_ROW_FORMAT_JSON,
	})
	if err != nil {
		return refused("ReadRows", err)
	}
	var read []string
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return refused("ReadRows", err)
		}
		for _, row := range response.GetJsonRows().GetRows() {
			read = append(read, mustJSON(row.AsMap()))
		}
	}
	fmt.Printf("read %d rows from %s.%s\n", len(read), namespace, table)
	for _, row := range read {
		fmt.Printf("read row %s\n", row)
	}
	return nil
}

// showRefusal asks for a table that does not exist and prints the refusal: its code and the
// ErrorInfo reason, the stable name a program should branch on (see docs/errors.md).
func showRefusal(ctx context.Context, tables lakehousev1.TableServiceClient, namespace string) error {
	_, err := tables.GetTable(ctx, &lakehousev1.GetTableRequest{Namespace: namespace, Table: "no_such_table"})
	if err == nil {
		return errors.New("GetTable of a missing table succeeded")
	}
	st := status.Convert(err)
	fmt.Printf("GetTable %s.no_such_table refused: code %s, reason %s\n", namespace, st.Code(), reason(err))
	return nil
}

// reason is the ErrorInfo reason of a failed call, "" when it carries none.
func reason(err error) string {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// refused describes a failed call by its code, ErrorInfo reason and message.
func refused(call string, err error) error {
	st := status.Convert(err)
	return fmt.Errorf("%s refused: code %s, reason %s: %s", call, st.Code(), reason(err), st.Message())
}

func mustJSON(value interface{}) string {
	text, err := json.Marshal(value) // maps marshal with sorted keys
	if err != nil {
		panic(err)
	}
	return string(text)
}
