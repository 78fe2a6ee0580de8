// Tool parameter schemas, written once: each builder returns the plain JSON Schema object the
// gateway hands the model, and its TypeScript type carries the value it describes (`Static`), so
// a tool's params type is derived from its schema and the two cannot drift.
//
// OpenClaw's own tools write these with TypeBox, but the SDK does not re-export it and the gateway
// aliases only `openclaw/plugin-sdk/*` for plugins: a linked source plugin with no node_modules
// cannot import `typebox` at run time. These few builders cover the JSON Schema subset the tools
// use; the objects they build are the ones the tools always sent.

export interface StringSchema<T extends string = string> {
  type: "string";
  enum?: readonly T[];
  description?: string;
}
export interface IntegerSchema {
  type: "integer";
  minimum?: number;
  description?: string;
}
export interface NumberSchema {
  type: "number";
  description?: string;
}
export interface BooleanSchema {
  type: "boolean";
  description?: string;
}
export interface ArraySchema<I extends Schema = Schema> {
  type: "array";
  items: I;
  description?: string;
}
/** An object with any keys, each value of `V` (or anything when there is no `V`). */
export interface MapSchema<V extends Schema | undefined = undefined> {
  type: "object";
  additionalProperties?: V;
  description?: string;
}
/** An object with exactly `P`'s keys, the `R` ones required. */
export interface ObjectSchema<P extends Properties = Properties, R extends keyof P & string = keyof P & string> {
  type: "object";
  additionalProperties: false;
  properties: P;
  required: R[];
  description?: string;
}

export type Schema =
  | StringSchema
  | IntegerSchema
  | NumberSchema
  | BooleanSchema
  | ArraySchema
  | MapSchema<Schema | undefined>
  | ObjectSchema;
export type Properties = { [key: string]: Schema };

/** The value a schema describes. */
export type Static<S> =
  S extends StringSchema<infer T> ? T
  : S extends IntegerSchema | NumberSchema ? number
  : S extends BooleanSchema ? boolean
  : S extends ArraySchema<infer I> ? Static<I>[]
  : S extends ObjectSchema<infer P, infer R> ? { [K in R]: Static<P[K]> } & { [K in Exclude<keyof P, R>]?: Static<P[K]> }
  : S extends MapSchema<infer V> ? Record<string, V extends Schema ? Static<V> : unknown>
  : never;

// `NoInfer`: a schema's type comes from its builder's arguments only, never from where the call
// sits (inside another schema, the context would widen an enum to string or make every
// property required).
export const object = <P extends Properties, R extends keyof P & string = never>(
  properties: P,
  required: R[] = [],
): ObjectSchema<NoInfer<P>, NoInfer<R>> => ({ type: "object", additionalProperties: false, properties, required });
export const str = (description: string): StringSchema => ({ type: "string", description });
export const oneOf = <T extends string>(values: readonly T[], description: string): StringSchema<NoInfer<T>> => ({
  type: "string",
  enum: values,
  description,
});
export const int = (description: string, minimum = 0): IntegerSchema => ({ type: "integer", minimum, description });
export const num = (description: string): NumberSchema => ({ type: "number", description });
export const bool = (description: string): BooleanSchema => ({ type: "boolean", description });
export const strings = (description: string): ArraySchema<StringSchema> => ({
  type: "array",
  items: { type: "string" },
  description,
});
export const map = <V extends Schema>(values: V, description: string): MapSchema<NoInfer<V>> => ({
  type: "object",
  additionalProperties: values,
  description,
});
/** An object of any shape (the bridge checks it). */
export const anyObject = (description?: string): MapSchema =>
  description === undefined ? { type: "object" } : { type: "object", description };
