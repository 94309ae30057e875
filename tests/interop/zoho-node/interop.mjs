// Drives the synchub Zoho CRM emulator with Zoho's official Node SDK
// (@zohocrm/nodejs-sdk-8.0, unmodified), pointed at the emulator the way
// ZOHO-API.md section 11.1 shows. Every step asserts its result; the first
// failure prints a clear message and exits non-zero.
//
// Environment: ZOHO_SIM_URL (emulator base URL, required), ZOHO_CLIENT_ID,
// ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN (default: the built-in seed's),
// ZOHO_CACHE_DIR (token file and SDK metadata cache; default ./zoho-cache).

import * as fs from "node:fs";
import * as Z from "@zohocrm/nodejs-sdk-8.0";

const base = process.env.ZOHO_SIM_URL;
if (!base) {
  console.error("FAIL: set ZOHO_SIM_URL to the emulator base URL, e.g. http://127.0.0.1:9000");
  process.exit(2);
}
const clientId = process.env.ZOHO_CLIENT_ID ?? "1000.SYNCHUBDEV";
const clientSecret = process.env.ZOHO_CLIENT_SECRET ?? "synchub-dev-secret";
const refreshToken = process.env.ZOHO_REFRESH_TOKEN ?? "1000.synchub.dev.refresh";
const cache = process.env.ZOHO_CACHE_DIR ?? "./zoho-cache";
fs.mkdirSync(cache, { recursive: true });
// Access tokens from an earlier emulator run mean nothing to this one, and
// the SDK does not refresh on 401: start from the refresh token every time.
fs.rmSync(`${cache}/tokens.txt`, { force: true });

let step = "setup";
function check(condition, message) {
  if (!condition) {
    throw new Error(`${step}: ${message}`);
  }
}

function describe(response) {
  const object = response?.getObject?.();
  if (object instanceof Z.Record.APIException || object instanceof Z.Fields.APIException) {
    return `HTTP ${response.getStatusCode()} ${object.getCode()?.getValue?.()} ${object.getMessage()?.getValue?.()} ${JSON.stringify(Object.fromEntries(object.getDetails?.() ?? []))}`;
  }
  return `HTTP ${response?.getStatusCode?.()} ${object?.constructor?.name}`;
}

function actionEntries(response, wanted) {
  check(response.getStatusCode() === wanted, `expected HTTP ${wanted}, got ${describe(response)}`);
  const wrapper = response.getObject();
  check(wrapper instanceof Z.Record.ActionWrapper, `expected an ActionWrapper, got ${describe(response)}`);
  const entries = wrapper.getData();
  for (const entry of entries) {
    check(entry instanceof Z.Record.SuccessResponse, `a record failed: ${entry.getCode?.()?.getValue?.()} ${entry.getMessage?.()?.getValue?.()}`);
  }
  return entries;
}

function records(response) {
  check(response.getStatusCode() === 200, `expected HTTP 200, got ${describe(response)}`);
  const wrapper = response.getObject();
  check(wrapper instanceof Z.Record.ResponseWrapper, `expected a ResponseWrapper, got ${describe(response)}`);
  return wrapper.getData();
}

async function main() {
  const environment = new Z.Environment(base, `${base}/oauth/v2/token`, base);
  const token = new Z.OAuthBuilder()
    .clientId(clientId)
    .clientSecret(clientSecret)
    .refreshToken(refreshToken)
    .findUser(false)
    .build();
  await (await new Z.InitializeBuilder())
    .environment(environment)
    .token(token)
    .SDKConfig(new Z.SDKConfigBuilder().updateAPIDomain(false).autoRefreshFields(false).pickListValidation(false).build())
    .store(new Z.FileStore(`${cache}/tokens.txt`))
    .resourcePath(cache)
    .logger(new Z.LogBuilder().level(Z.Levels.INFO).filePath(`${cache}/sdk.log`).build())
    .initialize();

  const leads = new Z.Record.RecordOperations("Leads");
  const email = `node-sdk-${Date.now()}@interop.invalid`;

  step = "get records with fields";
  let params = new Z.ParameterMap();
  await params.add(Z.Record.GetRecordsParam.FIELDS, "Last_Name,Email,Company,Modified_Time");
  await params.add(Z.Record.GetRecordsParam.PER_PAGE, 200);
  let list = records(await leads.getRecords(params));
  check(list.length >= 2, `expected the seeded leads, got ${list.length}`);
  check(list.some((r) => r.getKeyValue("Last_Name") === "Maclead"), "the seeded lead Maclead is missing");
  const info = (await leads.getRecords(params)).getObject().getInfo();
  check(info.getMoreRecords() === false, "more_records should be false");
  console.log(`ok - get records: ${list.length} leads`);

  step = "get records with If-Modified-Since";
  let headers = new Z.HeaderMap();
  await headers.add(Z.Record.GetRecordsHeader.IF_MODIFIED_SINCE, new Date(Date.now() + 3600 * 1000));
  let response = await leads.getRecords(params, headers);
  check(response.getStatusCode() === 304, `expected HTTP 304, got ${describe(response)}`);
  console.log("ok - If-Modified-Since in the future answers 304");

  step = "create";
  let record = new Z.Record.Record();
  record.addKeyValue("Last_Name", "Interop");
  record.addKeyValue("First_Name", "Node");
  record.addKeyValue("Email", email);
  record.addKeyValue("Company", "Zoho SDK");
  record.addKeyValue("No_of_Employees", 7);
  let body = new Z.Record.BodyWrapper();
  body.setData([record]);
  body.setTrigger([]);
  let created = actionEntries(await leads.createRecords(body), 201);
  const id = created[0].getDetails().get("id");
  check(id !== undefined && id !== null, "the created record has no id");
  check(created[0].getMessage().getValue() === "record added", "unexpected create message");
  console.log(`ok - created lead ${id}`);

  step = "update";
  record = new Z.Record.Record();
  record.setId(BigInt(id));
  record.addKeyValue("Company", "Updated by the SDK");
  body = new Z.Record.BodyWrapper();
  body.setData([record]);
  body.setTrigger([]);
  let updated = actionEntries(await leads.updateRecords(body), 200);
  check(updated[0].getMessage().getValue() === "record updated", "unexpected update message");
  console.log("ok - updated");

  step = "upsert";
  record = new Z.Record.Record();
  record.addKeyValue("Last_Name", "Interop");
  record.addKeyValue("Email", email);
  record.addKeyValue("Lead_Source", new Z.Choice("Partner"));
  const fresh = new Z.Record.Record();
  fresh.addKeyValue("Last_Name", "Upserted");
  fresh.addKeyValue("Email", `fresh.${Date.now()}@interop.invalid`);
  body = new Z.Record.BodyWrapper();
  body.setData([record, fresh]);
  body.setDuplicateCheckFields(["Email"]);
  body.setTrigger([]);
  let upserted = actionEntries(await leads.upsertRecords(body), 200);
  check(String(upserted[0].getDetails().get("id")) === String(id), "the upsert did not match the created lead by Email");
  check(String(upserted[1].getDetails().get("id")) !== String(id), "the second upsert record should be new");
  const freshId = upserted[1].getDetails().get("id");
  console.log("ok - upserted (one update, one insert)");

  step = "get one";
  params = new Z.ParameterMap();
  response = await leads.getRecord(BigInt(id), params);
  const one = records(response);
  check(one.length === 1, `expected one record, got ${one.length}`);
  check(one[0].getKeyValue("Company") === "Updated by the SDK", `Company is ${one[0].getKeyValue("Company")}`);
  check(one[0].getKeyValue("Lead_Source")?.getValue?.() === "Partner" || one[0].getKeyValue("Lead_Source") === "Partner", "the upsert did not set Lead_Source");
  check(one[0].getModifiedTime() instanceof Date, "Modified_Time did not parse as a Date");
  console.log("ok - got one");

  step = "search";
  params = new Z.ParameterMap();
  await params.add(Z.Record.SearchRecordsParam.CRITERIA, `(Email:equals:${email})`);
  const found = records(await leads.searchRecords(params));
  check(found.length === 1 && String(found[0].getId()) === String(id), `search found ${found.length} records`);
  params = new Z.ParameterMap();
  await params.add(Z.Record.SearchRecordsParam.WORD, "nobodyhasthisword");
  response = await leads.searchRecords(params);
  check(response.getStatusCode() === 204, `an empty search should answer 204, got ${describe(response)}`);
  console.log("ok - searched");

  step = "field metadata";
  params = new Z.ParameterMap();
  await params.add(Z.Fields.GetFieldsParam.MODULE, "Leads");
  response = await new Z.Fields.FieldsOperations().getFields(params);
  check(response.getStatusCode() === 200, `expected HTTP 200, got ${describe(response)}`);
  const fields = response.getObject().getFields();
  const lastName = fields.find((f) => f.getAPIName() === "Last_Name");
  check(lastName !== undefined, "Last_Name is not in the field metadata");
  check(lastName.getSystemMandatory() === true, "Last_Name should be system mandatory");
  check(fields.some((f) => f.getAPIName() === "Modified_Time"), "Modified_Time is missing");
  console.log(`ok - read ${fields.length} fields`);

  step = "delete";
  params = new Z.ParameterMap();
  await params.add(Z.Record.DeleteRecordsParam.IDS, String(id));
  await params.add(Z.Record.DeleteRecordsParam.IDS, String(freshId));
  const deleted = actionEntries(await leads.deleteRecords(params), 200);
  check(deleted.length === 2, `expected two deletions, got ${deleted.length}`);
  response = await leads.getRecord(BigInt(id), new Z.ParameterMap());
  check(response.getStatusCode() === 204, `a deleted record should answer 204, got ${describe(response)}`);
  params = new Z.ParameterMap();
  await params.add(Z.Record.GetDeletedRecordsParam.TYPE, "all");
  response = await leads.getDeletedRecords(params);
  check(response.getStatusCode() === 200, `deleted records: ${describe(response)}`);
  const gone = response.getObject().getData().map((d) => String(d.getId()));
  check(gone.includes(String(id)), "the deleted lead is not in the deleted list");
  console.log("ok - deleted");

  console.log("ALL CHECKS PASSED");
}

main().catch((err) => {
  console.error(`FAIL: ${err?.message ?? err}`);
  if (err?.stack) console.error(err.stack);
  if (err?.details) console.error(JSON.stringify(err.details));
  process.exit(1);
});
