// The lakehouse TypeScript client, end to end: a namespace and a table, rows written as Arrow
// IPC (WriteRows), an exactly-once AppendRows stream with a writer id and a resend, the rows
// read back and decoded with apache-arrow (ReadRows), the ErrorInfo reason of a refused call,
// and an API key on every call. Settings come from the environment:
//   LAKEHOUSE_ADDRESS   host:port of the gRPC port (default localhost:50051)
//   LAKEHOUSE_KEY       an API key with the developer role; unset when authentication is off
//   LAKEHOUSE_NAMESPACE and LAKEHOUSE_TABLE: where to write (default ts_example.orders)
import { create } from "@bufbuild/protobuf";
import * as crypto from "node:crypto";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "@lakehouse/client/google/rpc/error_details_pb.js";
import {
  type AppendRowsRequest,
  AppendRowsRequestSchema,
  IngestService,
} from "@lakehouse/client/lakehouse/v1/ingest_service_pb.js";
import { RowFormat } from "@lakehouse/client/lakehouse/v1/rows_pb.js";
import { PrimitiveType } from "@lakehouse/client/lakehouse/v1/schema_pb.js";
import { TableService } from "@lakehouse/client/lakehouse/v1/table_service_pb.js";
import {
  Float64,
  Int64,
  Table,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";

const address = process.env.LAKEHOUSE_ADDRESS ?? "localhost:50051";
const apiKey = process.env.LAKEHOUSE_KEY ?? "";
const namespace = process.env.LAKEHOUSE_NAMESPACE ?? "ts_example";
const table = process.env.LAKEHOUSE_TABLE ?? "orders";

interface Order {
  id: bigint;
  region: string;
  amount: number;
}

// The server reads `authorization: Bearer <API key or JWT>` metadata on every call.
const bearer =
  (key: string): Interceptor =>
  (next) =>
  async (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return await next(req);
  };

const transport = createGrpcTransport({
  baseUrl: `http://${address}`,
  interceptors: apiKey ? [bearer(apiKey)] : [],
});
const tables = createClient(TableService, transport);
const ingest = createClient(IngestService, transport);

// Rows as one complete Arrow IPC stream (schema, then the batch), as WriteRows and AppendRows
// accept it: no separate arrow_schema needed.
function arrowStream(orders: Order[]): Uint8Array {
  const rows = new Table({
    id: vectorFromArray(orders.map((o) => o.id), new Int64()),
    region: vectorFromArray(orders.map((o) => o.region), new Utf8()),
    amount: vectorFromArray(orders.map((o) => o.amount), new Float64()),
  });
  return tableToIPC(rows, "stream");
}

function appendRequest(offset: number, orders: Order[], first: boolean): AppendRowsRequest {
  return create(AppendRowsRequestSchema, {
    // The table and the writer are named in the first request of a stream.
    ...(first ? { namespace, table, writerId: "ts-example-writer" } : {}),
    offset: BigInt(offset),
    rows: {
      case: "arrowRecordBatch",
      value: { serializedRecordBatch: arrowStream(orders), rowCount: BigInt(orders.length) },
    },
  });
}

// A client stream is an AsyncIterable of requests.
async function* each<T>(items: T[]): AsyncIterable<T> {
  yield* items;
}

// One AppendRows stream: sends the requests, prints one acknowledgement each.
async function append(requests: AppendRowsRequest[]): Promise<void> {
  for await (const ack of ingest.appendRows(each(requests))) {
    if (ack.response.case !== "result") {
      throw new Error(`AppendRows offset ${ack.offset}: ${ack.response.value?.message}`);
    }
    const result = ack.response.value;
    console.log(
      result.alreadyWritten
        ? `AppendRows offset ${ack.offset}: already written, nothing written again`
        : `AppendRows offset ${ack.offset}: ${result.rowsWritten} rows written ` +
            `in snapshot ${result.snapshotId}`,
    );
  }
}

// ReadRows in Arrow: the first message carries the schema, each following one an
// encapsulated record batch; schema + batches, in order, are an Arrow IPC stream.
async function readAll(): Promise<Table> {
  const messages: Uint8Array[] = [];
  for await (const reply of tables.readRows({ namespace, table, format: RowFormat.ARROW })) {
    if (reply.payload.case === "arrowSchema") {
      messages.push(reply.payload.value.serializedSchema);
    } else if (reply.payload.case === "arrowRecordBatch") {
      messages.push(reply.payload.value.serializedRecordBatch);
    }
  }
  const stream = new Uint8Array(messages.reduce((size, m) => size + m.length, 0));
  let at = 0;
  for (const message of messages) {
    stream.set(message, at);
    at += message.length;
  }
  return tableFromIPC(stream);
}

const primitive = (value: PrimitiveType) => ({ kind: { case: "primitive" as const, value } });

async function main(): Promise<void> {
  await tables.createNamespace({ name: namespace });
  console.log(`created namespace ${namespace}`);
  await tables.createTable({
    namespace,
    table,
    schema: {
      fields: [
        { name: "id", type: primitive(PrimitiveType.LONG), required: true },
        { name: "region", type: primitive(PrimitiveType.STRING) },
        { name: "amount", type: primitive(PrimitiveType.DOUBLE) },
      ],
    },
  });
  console.log(`created table ${namespace}.${table}`);

  // WriteRows: one message; the request id makes a retry of it safe.
  const written = await ingest.writeRows({
    namespace,
    table,
    requestId: crypto.randomUUID(),
    rows: {
      case: "arrowRecordBatch",
      value: {
        serializedRecordBatch: arrowStream([
          { id: 1n, region: "eu", amount: 12.5 },
          { id: 2n, region: "us", amount: 7 },
        ]),
      },
    },
  });
  const result = written.result;
  console.log(`WriteRows: ${result?.rowsWritten} rows written in snapshot ${result?.snapshotId}`);

  // AppendRows, exactly once: offsets count the writer's rows from 0. The second stream plays
  // a writer that lost the acknowledgement of offset 0 and resends it before going on: the
  // table keeps the writer's committed offset, so the resent rows are not written twice.
  const firstRows: Order[] = [
    { id: 3n, region: "eu", amount: 3.25 },
    { id: 4n, region: "apac", amount: 40 },
  ];
  await append([appendRequest(0, firstRows, true)]);
  await append([
    appendRequest(0, firstRows, true),
    appendRequest(2, [{ id: 5n, region: "us", amount: 5.5 }], false),
  ]);
  const writer = await ingest.getWriter({ namespace, table, writerId: "ts-example-writer" });
  console.log(`GetWriter: ts-example-writer resumes at offset ${writer.writer?.nextOffset}`);

  const rows = await readAll();
  const columns = rows.schema.fields.map((f) => f.name).join(",");
  console.log(`ReadRows: ${rows.numRows} rows, columns ${columns}`);
  for (const row of rows) {
    // long columns decode as bigint, which JSON.stringify refuses; these ids are small.
    const { id, region, amount } = row.toJSON() as unknown as Order;
    console.log(`row ${JSON.stringify({ id: Number(id), region, amount })}`);
  }

  // A refused call: the reason is in google.rpc.ErrorInfo (grpc-status-details-bin).
  const refused = await tables.getTable({ namespace, table: "no_such_table" }).then(
    () => null,
    (err: unknown) => ConnectError.from(err),
  );
  if (refused === null) {
    throw new Error("GetTable of a missing table succeeded");
  }
  const [info] = refused.findDetails(ErrorInfoSchema);
  console.log(
    `GetTable ${namespace}.no_such_table: ${Code[refused.code]} ` +
      `reason ${info?.reason} domain ${info?.domain}`,
  );

  // The same service without the API key.
  const noKey = createGrpcTransport({ baseUrl: `http://${address}` });
  const anonymous = createClient(TableService, noKey);
  try {
    await anonymous.listNamespaces({});
    console.log("ListNamespaces without the API key: allowed (authentication is off)");
  } catch (err) {
    console.log(`ListNamespaces without the API key: ${Code[ConnectError.from(err).code]}`);
  }
}

await main();
