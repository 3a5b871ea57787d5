/* Run one signature of an exported SavedModel from C, with TensorFlow's C API.
 *
 * This is "another app in another language": it loads the SavedModel with
 * the session-based loader that TensorFlow Serving, Java and Go use
 * (TF_LoadSessionFromSavedModel: restore op, init op), feeds one row per
 * input and prints the outputs. Nothing from this repository is needed.
 *
 *   make c-example            # builds it against the tensorflow wheel and runs it on the demo models
 *
 * Usage:
 *   run_saved_model EXPORT_DIR FEED... -- FETCH...       prints "FETCH [shape]: values", one line each
 *     FEED   TENSOR=TYPE:VALUE           one string, or comma-separated numbers of shape [n]
 *            TENSOR=TYPE[D0,D1,...]:VALUES  numbers of that shape
 *            TYPE is string, float, int32 or int64
 *     FETCH  TENSOR
 *   TENSOR is a graph tensor "operation:index"; a signature's names are listed by
 *     saved_model_cli show --dir EXPORT_DIR --tag_set serve --signature_def SIGNATURE
 *
 * Example (the text model's generate signature):
 *   run_saved_model saved_models/text/1 generate_text:0=string:"To be " generate_max_tokens:0=int32:60 \
 *       generate_temperature:0=float:0.5 generate_seed:0=int64:1 -- StatefulPartitionedCall_1:0
 *
 * Exit codes: 0 answered, 1 TensorFlow refused (its message on stderr), 2 bad arguments.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

#define MAX_TENSORS 16
#define MAX_DIMS 8

static void fail_usage(const char *message, const char *detail) {
  fprintf(stderr, "error: %s%s\nusage: run_saved_model EXPORT_DIR TENSOR=TYPE:VALUE... -- TENSOR...\n",
          message, detail);
  exit(2);
}

static void check(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) {
    fprintf(stderr, "error: %s: %s\n", what, TF_Message(status));
    exit(1);
  }
}

/* "operation:index" -> the graph output it names. */
static TF_Output find_tensor(TF_Graph *graph, const char *name) {
  char op_name[512];
  snprintf(op_name, sizeof op_name, "%s", name);
  int index = 0;
  char *colon = strrchr(op_name, ':');
  if (colon != NULL) {
    index = atoi(colon + 1);
    *colon = '\0';
  }
  TF_Operation *operation = TF_GraphOperationByName(graph, op_name);
  if (operation == NULL) fail_usage("no such operation in the graph (list them with saved_model_cli show): ", op_name);
  TF_Output output = {operation, index};
  return output;
}

static size_t element_size(TF_DataType type) {
  return type == TF_FLOAT || type == TF_INT32 ? 4 : 8;
}

/* "TYPE:VALUE" or "TYPE[D0,...]:VALUES" -> a tensor. */
static TF_Tensor *parse_value(const char *spec) {
  const char *colon = strchr(spec, ':');
  if (colon == NULL) fail_usage("a feed needs TYPE:VALUE, got ", spec);
  char type_name[64];
  snprintf(type_name, sizeof type_name, "%.*s", (int)(colon - spec), spec);
  const char *values = colon + 1;
  int64_t dims[MAX_DIMS];
  int num_dims = -1;
  char *bracket = strchr(type_name, '[');
  if (bracket != NULL) {
    *bracket = '\0';
    num_dims = 0;
    for (char *p = bracket + 1; *p && *p != ']' && num_dims < MAX_DIMS;) {
      dims[num_dims++] = strtoll(p, &p, 10);
      if (*p == ',') p++;
    }
  }
  if (strcmp(type_name, "string") == 0) {  /* one string: shape [1] */
    int64_t one = 1;
    TF_Tensor *tensor = TF_AllocateTensor(TF_STRING, &one, 1, sizeof(TF_TString));
    TF_TString *text = (TF_TString *)TF_TensorData(tensor);
    TF_StringInit(text);
    TF_StringCopy(text, values, strlen(values));
    return tensor;
  }
  TF_DataType type;
  if (strcmp(type_name, "float") == 0) type = TF_FLOAT;
  else if (strcmp(type_name, "int32") == 0) type = TF_INT32;
  else if (strcmp(type_name, "int64") == 0) type = TF_INT64;
  else fail_usage("TYPE must be string, float, int32 or int64, got ", type_name);
  size_t count = 1;
  for (const char *p = values; *p; p++) count += *p == ',';
  unsigned char *data = malloc(count * 8);
  const char *p = values;
  for (size_t i = 0; i < count; i++) {
    char *end;
    if (type == TF_FLOAT) ((float *)data)[i] = strtof(p, &end);
    else if (type == TF_INT32) ((int32_t *)data)[i] = (int32_t)strtol(p, &end, 10);
    else ((int64_t *)data)[i] = strtoll(p, &end, 10);
    if (end == p) fail_usage("not a number: ", p);
    p = *end == ',' ? end + 1 : end;
  }
  if (num_dims < 0) {
    num_dims = 1;
    dims[0] = (int64_t)count;
  }
  int64_t elements = 1;
  for (int i = 0; i < num_dims; i++) elements *= dims[i];
  if (elements != (int64_t)count) fail_usage("the shape does not match the number of values: ", spec);
  TF_Tensor *tensor = TF_AllocateTensor(type, dims, num_dims, count * element_size(type));
  memcpy(TF_TensorData(tensor), data, count * element_size(type));
  free(data);
  return tensor;
}

static void print_tensor(const char *name, const TF_Tensor *tensor) {
  int64_t count = TF_TensorElementCount(tensor);
  printf("%s [", name);
  for (int i = 0; i < TF_NumDims(tensor); i++) printf(i ? ",%lld" : "%lld", (long long)TF_Dim(tensor, i));
  printf("]:");
  const void *data = TF_TensorData(tensor);
  for (int64_t i = 0; i < count; i++) {
    switch (TF_TensorType(tensor)) {
      case TF_STRING: {  /* one line per tensor: newlines and backslashes escaped */
        const TF_TString *text = (const TF_TString *)data + i;
        const char *bytes = TF_StringGetDataPointer(text);
        putchar(' ');
        for (size_t k = 0; k < TF_StringGetSize(text); k++) {
          if (bytes[k] == '\n') fputs("\\n", stdout);
          else if (bytes[k] == '\\') fputs("\\\\", stdout);
          else putchar(bytes[k]);
        }
        break;
      }
      case TF_FLOAT: printf(" %.9g", ((const float *)data)[i]); break;
      case TF_INT32: printf(" %d", ((const int32_t *)data)[i]); break;
      case TF_INT64: printf(" %lld", (long long)((const int64_t *)data)[i]); break;
      default: printf(" (dtype %d)", TF_TensorType(tensor)); i = count; break;
    }
  }
  printf("\n");
}

int main(int argc, char **argv) {
  if (argc < 4) fail_usage("too few arguments", "");
  const char *export_dir = argv[1];
  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  const char *tags[] = {"serve"};
  TF_Session *session = TF_LoadSessionFromSavedModel(options, NULL, export_dir, tags, 1, graph, NULL, status);
  check(status, "loading the SavedModel");

  TF_Output inputs[MAX_TENSORS], outputs[MAX_TENSORS];
  TF_Tensor *input_values[MAX_TENSORS], *output_values[MAX_TENSORS];
  const char *output_names[MAX_TENSORS];
  int num_inputs = 0, num_outputs = 0, fetching = 0;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      fetching = 1;
    } else if (fetching) {
      if (num_outputs == MAX_TENSORS) fail_usage("too many fetches", "");
      output_names[num_outputs] = argv[i];
      outputs[num_outputs++] = find_tensor(graph, argv[i]);
    } else {
      char *equals = strchr(argv[i], '=');
      if (equals == NULL) fail_usage("a feed is TENSOR=TYPE:VALUE, got ", argv[i]);
      if (num_inputs == MAX_TENSORS) fail_usage("too many feeds", "");
      *equals = '\0';
      inputs[num_inputs] = find_tensor(graph, argv[i]);
      input_values[num_inputs++] = parse_value(equals + 1);
    }
  }
  if (num_outputs == 0) fail_usage("name at least one tensor to fetch after --", "");

  TF_SessionRun(session, NULL, inputs, input_values, num_inputs, outputs, output_values, num_outputs,
                NULL, 0, NULL, status);
  check(status, "running the signature");
  for (int i = 0; i < num_outputs; i++) {
    print_tensor(output_names[i], output_values[i]);
    TF_DeleteTensor(output_values[i]);
  }
  for (int i = 0; i < num_inputs; i++) TF_DeleteTensor(input_values[i]);
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  return 0;
}
