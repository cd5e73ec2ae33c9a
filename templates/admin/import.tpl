% rebase('admin/base.tpl', title='Import a catalog', section='/admin/catalog')
<p><a href="/admin/catalog">← Catalog</a></p>
<h1>Import a catalog</h1>
<p>A catalog file is the same JSON that <code>seed_catalog.py</code> reads. To include photos, upload a ZIP holding <code>catalog.json</code> and the images it names. You see what would change before anything is imported.</p>
<form method="post" action="/admin/import" enctype="multipart/form-data" class="card form">
  % include('admin/_csrf.tpl')
  <label>Catalog file (.json or .zip) <input type="file" name="file" required accept=".json,.zip,application/json,application/zip"></label>
  <button type="submit">Preview</button>
</form>
% if errors:
<section class="card">
  <h2>The file has {{len(errors)}} problem{{"" if len(errors) == 1 else "s"}}; nothing was imported</h2>
  <ul class="errors">
    % for e in errors:
    <li>{{e}}</li>
    % end
  </ul>
</section>
% end
% if preview:
<section class="card">
  <h2>This import would change</h2>
  <table><tbody>
  % for key, n in preview.items():
  <tr><th>{{key.replace("_", " ")}}</th><td class="num">{{n}}</td></tr>
  % end
  </tbody></table>
  <form method="post" action="/admin/import/confirm">
    % include('admin/_csrf.tpl')
    <input type="hidden" name="token" value="{{token}}">
    <button type="submit">Import</button>
  </form>
</section>
% end
