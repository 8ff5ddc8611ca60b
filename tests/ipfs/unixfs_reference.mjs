// Independent reference for the importer: @ipld/unixfs (the library inside ipfs-car 3) run with
// any chunk size and layout width. Usage: node unixfs_reference.mjs CHUNK WIDTH FILE... ;
// prints one root CID per file (CIDv1, raw leaves, balanced layout).
import { readFileSync } from 'node:fs'
import * as UnixFS from '@ipld/unixfs'
import { withMaxChunkSize } from '@ipld/unixfs/file/chunker/fixed'
import { withWidth } from '@ipld/unixfs/file/layout/balanced'
import * as raw from 'multiformats/codecs/raw'

const [chunk, width, ...files] = process.argv.slice(2)
const settings = UnixFS.configure({
  fileChunkEncoder: raw,
  smallFileEncoder: raw,
  chunker: withMaxChunkSize(Number(chunk)),
  fileLayout: withWidth(Number(width))
})

for (const file of files) {
  const { readable, writable } = new TransformStream()
  const drained = readable.pipeTo(new WritableStream())
  const writer = UnixFS.createWriter({ writable, settings })
  const fileWriter = UnixFS.createFileWriter(writer)
  fileWriter.write(readFileSync(file))
  const link = await fileWriter.close()
  writer.close()
  await drained
  console.log(link.cid.toString())
}
