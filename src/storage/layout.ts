// The on-disk layout of the cache, in one place (docs/architecture.md repeats it):
//
//   <dataDir>/
//     blobs/sha256/<first two hex>/<64 hex>   committed content: layers, configs AND manifests,
//                                             immutable, only ever created by rename(2) after the
//                                             digest and size were verified and the file fsync'd
//     tmp/<64 hex>.<random>.part              in-flight fills and writes; anything here at start-up
//                                             is a leftover of an interrupted fill and is deleted
//     index/journal.jsonl                     append-only metadata journal (cache-index.ts): which
//                                             repository references which digest, manifest media
//                                             types, tag -> digest records; compacted at start-up
import path from 'node:path';
import { digestHex, type Digest } from '../oci/digest.ts';

export class CacheLayout {
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly indexDir: string;
  readonly journalFile: string;

  constructor(readonly root: string) {
    this.blobsDir = path.join(root, 'blobs', 'sha256');
    this.tmpDir = path.join(root, 'tmp');
    this.indexDir = path.join(root, 'index');
    this.journalFile = path.join(this.indexDir, 'journal.jsonl');
  }

  /** A Digest is sha256:<64 hex> by construction, so this can never escape the root. */
  blobPath(digest: Digest): string {
    const hex = digestHex(digest);
    return path.join(this.blobsDir, hex.slice(0, 2), hex);
  }

  tempPath(digest: Digest): string {
    const rand = Math.random().toString(36).slice(2, 10);
    return path.join(this.tmpDir, `${digestHex(digest)}.${process.pid}.${rand}.part`);
  }
}
