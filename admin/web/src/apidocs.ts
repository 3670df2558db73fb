// /api/docs: Swagger UI from its npm package (swagger-ui-dist), built with the web app and
// served by Keyun itself — nothing from another host. It reads /api/openapi.json; "Try it
// out" calls this same server (a token from /api/v1/auth/* goes in "Authorize").
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-es-bundle.js";
import "swagger-ui-dist/swagger-ui.css";

SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list", // every operation listed, each opened by a click
  defaultModelsExpandDepth: 0,
  displayRequestDuration: true,
  persistAuthorization: true,
  tryItOutEnabled: false,
  validatorUrl: null, // never ask swagger.io to validate the document
});
