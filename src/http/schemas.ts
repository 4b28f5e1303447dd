/**
 * JSON schemas of the API: Fastify validates requests against them and serializes replies
 * through them, so a reply never carries a field the schema does not name.
 */
import { errorBodySchema } from './errors.js';
import { HISTORY_SAMPLES_MAX, TECHNIQUES } from './history.js';

const count = { type: 'integer', minimum: 0 } as const;
const bytes = { type: 'number', minimum: 0 } as const;
const ratio = { type: 'number' } as const;
const nullableNumber = { type: ['number', 'null'] } as const;
/** Anything JSON; used for fields whose shape another module owns (config, host safety). */
const anyJson = {} as const;

function byTechnique(item: object) {
  return {
    type: 'object',
    required: [...TECHNIQUES],
    properties: Object.fromEntries(TECHNIQUES.map((t) => [t, item])),
  };
}

const techniqueStats = {
  type: 'object',
  required: ['pages', 'objects', 'storedBytes', 'savedBytes'],
  properties: { pages: count, objects: count, storedBytes: bytes, savedBytes: { type: 'number' } },
} as const;

/** Responses shared by every API route besides its 200. */
const errorResponses = { '4xx': errorBodySchema, '5xx': errorBodySchema } as const;

const exportView = {
  type: 'object',
  required: [
    'name',
    'description',
    'group',
    'sizeBytes',
    'readOnly',
    'mappedPages',
    'logicalBytes',
    'storedBytes',
    'savedBytes',
    'savingRatio',
    'techniques',
    'clients',
    'recentErrors',
  ],
  properties: {
    name: { type: 'string' },
    description: { type: 'string' },
    group: { type: 'string' },
    sizeBytes: bytes,
    readOnly: { type: 'boolean' },
    mappedPages: count,
    logicalBytes: bytes,
    storedBytes: bytes,
    savedBytes: { type: 'number' },
    /** 1 - stored/logical; 0 for an empty export. */
    savingRatio: ratio,
    techniques: byTechnique(techniqueStats),
    clients: count,
    recentErrors: {
      type: 'object',
      required: ['windowS', 'windowCount', 'total'],
      properties: { windowS: count, windowCount: count, total: count },
    },
  },
} as const;

const rates = {
  type: 'object',
  required: [
    'readOpsPerS',
    'writeOpsPerS',
    'errorsPerS',
    'readBytesPerS',
    'writeBytesPerS',
    'readP50S',
    'readP99S',
    'writeP50S',
    'writeP99S',
  ],
  properties: {
    readOpsPerS: bytes,
    writeOpsPerS: bytes,
    errorsPerS: bytes,
    readBytesPerS: bytes,
    writeBytesPerS: bytes,
    readP50S: nullableNumber,
    readP99S: nullableNumber,
    writeP50S: nullableNumber,
    writeP99S: nullableNumber,
  },
} as const;

const countsByExport = { type: 'object', additionalProperties: count } as const;

export const exportParamsSchema = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', minLength: 1, maxLength: 4096 } },
} as const;

/** Routes that take no query parameters: one sent anyway is a mistake, answered 400. */
const noQuery = { type: 'object', additionalProperties: false, properties: {} } as const;

export const infoRoute = {
  querystring: noQuery,
  response: {
    200: {
      type: 'object',
      required: ['name', 'version', 'startedAtMs', 'uptimeS', 'backend', 'exportCount'],
      properties: {
        name: { type: 'string' },
        version: { type: 'string' },
        startedAtMs: count,
        uptimeS: bytes,
        backend: { type: 'string' },
        exportCount: count,
        ready: { type: 'boolean' },
        nbd: {
          type: ['object', 'null'],
          properties: { addresses: { type: 'array', items: anyJson } },
        },
        capabilities: {
          type: 'object',
          properties: { compact: { type: 'boolean' }, check: { type: 'boolean' } },
        },
        auth: { type: 'object', properties: { tokenRequired: { type: 'boolean' } } },
        history: {
          type: 'object',
          properties: { intervalMs: count, capacity: count },
        },
        config: anyJson,
        hostSafety: anyJson,
      },
    },
    ...errorResponses,
  },
} as const;

export const exportsRoute = {
  querystring: noQuery,
  response: {
    200: {
      type: 'object',
      required: ['exports'],
      properties: { exports: { type: 'array', items: exportView } },
    },
    ...errorResponses,
  },
} as const;

export const exportRoute = {
  params: exportParamsSchema,
  querystring: noQuery,
  response: { 200: exportView, ...errorResponses },
} as const;

export const statsRoute = {
  querystring: noQuery,
  response: {
    200: {
      type: 'object',
      required: [
        'atMs',
        'kind',
        'logicalBytes',
        'storedBytes',
        'savedBytes',
        'savingRatio',
        'diskBytes',
        'indexBytes',
        'techniques',
        'referencePages',
        'referenceFanInTotal',
        'referenceFanInMax',
        'writeBuffer',
        'compaction',
        'connections',
        'rates',
        'exports',
      ],
      properties: {
        atMs: count,
        kind: { type: 'string' },
        logicalBytes: bytes,
        storedBytes: bytes,
        savedBytes: { type: 'number' },
        savingRatio: ratio,
        diskBytes: bytes,
        indexBytes: bytes,
        techniques: byTechnique(techniqueStats),
        referencePages: count,
        referenceFanInTotal: count,
        referenceFanInMax: count,
        writeBuffer: {
          type: 'object',
          required: ['pages', 'capacityPages'],
          properties: { pages: count, capacityPages: count },
        },
        compaction: {
          type: 'object',
          required: ['running', 'segments', 'garbageBytes', 'reclaimedBytesTotal', 'lastRunAtMs'],
          properties: {
            running: { type: 'boolean' },
            segments: count,
            garbageBytes: bytes,
            reclaimedBytesTotal: bytes,
            lastRunAtMs: { type: ['integer', 'null'] },
          },
        },
        connections: {
          type: 'object',
          required: ['total', 'byExport'],
          properties: { total: count, byExport: countsByExport },
        },
        /** Rates over the last sampling interval; null before the first interval ends. */
        rates: { anyOf: [rates, { type: 'null' }] },
        exports: { type: 'array', items: exportView },
      },
    },
    ...errorResponses,
  },
} as const;

const historySample = {
  type: 'object',
  required: ['tMs', 'logicalBytes', 'storedBytes', 'diskBytes', 'techniques'],
  properties: {
    tMs: count,
    logicalBytes: bytes,
    storedBytes: bytes,
    diskBytes: bytes,
    techniques: byTechnique({
      type: 'object',
      required: ['pages', 'storedBytes'],
      properties: { pages: count, storedBytes: bytes },
    }),
    ...rates.properties,
    bufferPages: count,
    bufferCapacityPages: count,
    connections: countsByExport,
  },
} as const;

export const historyRoute = {
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      /** Only samples taken after this time (ms since the epoch), for incremental polling. */
      sinceMs: { type: 'integer', minimum: 0 },
      limit: { type: 'integer', minimum: 1, maximum: HISTORY_SAMPLES_MAX },
    },
  },
  response: {
    200: {
      type: 'object',
      required: ['intervalMs', 'capacity', 'samples'],
      properties: {
        intervalMs: count,
        capacity: count,
        samples: { type: 'array', items: historySample },
      },
    },
    ...errorResponses,
  },
} as const;

export const connectionsRoute = {
  querystring: noQuery,
  response: {
    200: {
      type: 'object',
      required: ['connections'],
      properties: {
        connections: {
          type: 'array',
          items: {
            type: 'object',
            required: ['id', 'exportName', 'remote', 'connectedAtMs', 'tls', 'inFlight'],
            properties: {
              id: count,
              exportName: { type: ['string', 'null'] },
              remote: { type: 'string' },
              connectedAtMs: count,
              tls: { type: 'boolean' },
              inFlight: count,
            },
          },
        },
      },
    },
    ...errorResponses,
  },
} as const;

const jobStatus = {
  type: 'object',
  required: ['supported', 'running', 'startedAtMs', 'finishedAtMs', 'error'],
  properties: {
    supported: { type: 'boolean' },
    running: { type: 'boolean' },
    startedAtMs: { type: ['integer', 'null'] },
    finishedAtMs: { type: ['integer', 'null'] },
    /** What the store returned from the last finished run. */
    result: anyJson,
    error: { type: ['string', 'null'] },
    /** Steps done of those expected, for a job that reports it (check); else null. */
    progress: {
      type: ['object', 'null'],
      required: ['done', 'total'],
      properties: { done: { type: 'integer' }, total: { type: 'integer' } },
    },
  },
} as const;

export const jobStatusRoute = {
  querystring: noQuery,
  response: { 200: jobStatus, ...errorResponses },
} as const;

export const jobStartRoute = (extra: Record<string, object>) =>
  ({
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: {
        /** Answer when the job has finished (200) instead of when it has started (202). */
        wait: { type: 'boolean', default: false },
        ...extra,
      },
    },
    response: { 200: jobStatus, 202: jobStatus, ...errorResponses },
  }) as const;

export const probeRoute = {
  response: {
    200: { type: 'object', properties: { status: { type: 'string' } } },
    503: { type: 'object', properties: { status: { type: 'string' } } },
  },
} as const;
